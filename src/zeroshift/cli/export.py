"""`zeroshift export`: a VLM as ONNX files, checked against PyTorch: one classifier with fixed labels,
or (--towers) an image and a text graph with the tokenizer; pixels in, float or int8."""
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
    out: str = field(metadata={"help": "file to write, e.g. classifier.onnx (a sidecar FILE.json describes it); "
                                       "with --towers a folder"})
    labels: str | None = field(default=None, metadata={
        "help": "at least two labels, 'a,b,c', or a label file: a value with no comma that ends in .txt, .csv or "
                ".json or holds a / is read as a file (one label per line, blank and '#' lines skipped; .json: a "
                "list of strings); with --towers optional (the defaults)"})
    format: str = field(default="onnx", metadata={"help": "export format", "choices": ["onnx"]})
    templates: str | None = field(default=None, metadata={
        "help": "template set name or file (default: the 'default' set)"})
    check: bool = field(default=True, metadata={"help": "run the file in onnxruntime and compare with PyTorch"})
    overwrite: bool = field(default=False, metadata={"help": "replace the file --out if it exists"})
    input: str = field(default="pixels", metadata={
        "help": "graph input: uint8 RGB pixels [N, H, W, 3] (preprocessing in the graph), or float [N, 3, H, W] "
                "after the model's transform", "choices": ["pixels", "float"]})
    towers: bool = field(default=False, metadata={
        "help": "write image.onnx, text.onnx and tokenizer.json into the folder --out, for labels chosen at run time"})
    int8: bool = field(default=False, metadata={
        "help": "quantise to int8 (static QDQ for CNNs, dynamic for MatMul-heavy towers), refused below "
                "--min-agreement with the float graph"})
    calibrate: str | None = field(default=None, metadata={
        "help": "int8 calibration images: a data spec, or a .npy of uint8 [N, H, W, 3] at the input size "
                "(default: a run's own fit data)"})
    calibration_images: int = field(default=128, metadata={"help": "images to calibrate on"})
    check_images: int = field(default=256, metadata={
        "help": "further images of the same data on which int8 agreement with the float graph is measured"})
    min_agreement: float = field(default=0.98, metadata={"help": "least int8-vs-float top-1 agreement accepted"})
    keep_float: bool = field(default=False, metadata={
        "help": "with --int8, also write the float graph(s) as NAME.float.onnx (even when the int8 one is refused)"})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, ExportConfig, run)


def run(cfg: ExportConfig) -> int:
    from zeroshift.export import export
    from zeroshift.zeroshot.labels import parse_labels

    if cfg.labels is None and not cfg.towers:
        from zeroshift.errors import ZeroshiftError

        raise ZeroshiftError("--labels is required (a classifier's labels are fixed); --towers exports labels "
                             "chosen at run time")
    labels = parse_labels(cfg.labels, files=True) if cfg.labels is not None else None
    int8 = None
    if cfg.int8:
        from zeroshift.export.quantize import Int8

        int8 = Int8(calibrate=cfg.calibrate, images=cfg.calibration_images, check_images=cfg.check_images,
                    min_agreement=cfg.min_agreement)
    path = export(cfg.model, labels, cfg.out, format=cfg.format, templates=cfg.templates, check=cfg.check,
                  input=cfg.input, int8=int8, keep_float=cfg.keep_float, towers=cfg.towers,
                  overwrite=cfg.overwrite)
    graphs = [path / "image.onnx", path / "text.onnx"] if cfg.towers else [path]
    rows = []
    for graph in graphs:
        sidecar = json.loads(Path(str(graph) + ".json").read_text(encoding="utf-8"))
        check, quant = sidecar.get("check") or {}, sidecar.get("int8") or {}
        row = [str(graph), round(graph.stat().st_size / 1e6, 2), len(sidecar.get("labels") or []),
               check.get("max_abs_logit_diff", check.get("max_abs_diff", "-")), check.get("top1_agreement", "-")]
        rows.append(row + ([quant.get("agreement", "-")] if cfg.int8 else []))
    header = ["file", "size MB", "classes", "max |logit diff|" if not cfg.towers else "max |diff|", "top-1 agreement"]
    print_table(rows, header + (["int8 agreement"] if cfg.int8 else []),
                title=f"exported {sidecar['model']} ({cfg.format}, {cfg.input} in{', int8' if cfg.int8 else ''})")
    return 0
