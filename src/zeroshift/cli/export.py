"""`zeroshift export`: a VLM and fixed labels as one ONNX classifier file, checked against PyTorch."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from .options import command
from .table import print_table


@dataclass(frozen=True)
class ExportConfig:
    model: str = field(metadata={"help": "model spec (any VLM), e.g. run:runs/my-bridge", "aliases": ("MODEL",)})
    labels: str = field(metadata={"help": "at least two labels, 'a,b,c', or a label file: a value with no comma that "
                                          "ends in .txt, .csv or .json or holds a / is read as a file (one label "
                                          "per line, blank and '#' lines skipped; .json: a list of strings)"})
    out: str = field(metadata={"help": "file to write, e.g. classifier.onnx (a sidecar FILE.json describes it)"})
    format: str = field(default="onnx", metadata={"help": "export format", "choices": ["onnx"]})
    templates: str | None = field(default=None, metadata={
        "help": "template set name or file (default: the 'default' set)"})
    check: bool = field(default=True, metadata={"help": "run the file in onnxruntime and compare with PyTorch"})
    overwrite: bool = field(default=False, metadata={"help": "replace the file --out if it exists"})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, ExportConfig, run)


def run(cfg: ExportConfig) -> int:
    from zeroshift.export import export
    from zeroshift.zeroshot.labels import parse_labels

    labels = parse_labels(cfg.labels, files=True)
    path = export(cfg.model, labels, cfg.out, format=cfg.format, templates=cfg.templates, check=cfg.check,
                  overwrite=cfg.overwrite)
    sidecar = json.loads(Path(str(path) + ".json").read_text(encoding="utf-8"))
    check = sidecar.get("check") or {}
    row = (str(path), round(path.stat().st_size / 1e6, 2), len(sidecar["labels"]),
           check.get("max_abs_logit_diff", "-"), check.get("top1_agreement", "-"))
    print_table([row], ["file", "size MB", "classes", "max |logit diff|", "top-1 agreement"],
                title=f"exported {sidecar['model']} ({cfg.format})")
    return 0
