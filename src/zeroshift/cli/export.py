"""`zeroshift export`: a VLM and fixed labels as one ONNX classifier file taking pixels, checked against PyTorch."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from .options import command
from .table import print_table


@dataclass(frozen=True)
class ExportConfig:
    model: str = field(metadata={"help": "model spec (any VLM), e.g. run:runs/my-bridge", "positional": True})
    out: str = field(metadata={"help": "file to write, e.g. classifier.onnx (a sidecar FILE.json describes it)"})
    labels: str = field(metadata={"help": "labels, comma-separated (or a .txt file, one per line)"})
    format: str = field(default="onnx", metadata={"help": "export format", "choices": ["onnx"]})
    templates: str | None = field(default=None, metadata={
        "help": "template set name or file (default: the 'default' set)"})
    check: bool = field(default=True, metadata={"help": "run the file in onnxruntime and compare with PyTorch"})
    input: str = field(default="pixels", metadata={
        "help": "graph input: uint8 RGB pixels [N, H, W, 3] (preprocessing in the graph), or float [N, 3, H, W] "
                "after the model's transform", "choices": ["pixels", "float"]})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, ExportConfig, run)


def run(cfg: ExportConfig) -> int:
    from zeroshift.export import export
    from zeroshift.zeroshot.labels import parse_labels

    labels = parse_labels(cfg.labels, files=True)
    path = export(cfg.model, labels, cfg.out, format=cfg.format, templates=cfg.templates, check=cfg.check,
                  input=cfg.input)
    graphs = [path]
    rows = []
    for graph in graphs:
        sidecar = json.loads(Path(str(graph) + ".json").read_text(encoding="utf-8"))
        check = sidecar.get("check") or {}
        row = [str(graph), round(graph.stat().st_size / 1e6, 2), len(sidecar.get("labels") or []),
               check.get("max_abs_logit_diff", check.get("max_abs_diff", "-")), check.get("top1_agreement", "-")]
        rows.append(row)
    header = ["file", "size MB", "classes", "max |logit diff|", "top-1 agreement"]
    print_table(rows, header, title=f"exported {sidecar['model']} ({cfg.format}, {cfg.input} in)")
    return 0
