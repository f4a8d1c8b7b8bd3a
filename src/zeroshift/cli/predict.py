"""`zeroshift predict`: rank free-text labels for each image."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from .options import command
from .table import print_table


@dataclass(frozen=True)
class PredictConfig:
    model: str = field(metadata={"help": "model spec (any VLM), e.g. conse:effnet-lite2+minilm"})
    labels: str = field(metadata={"help": "labels, comma-separated (or a .txt file, one per line)"})
    images: tuple[str, ...] = field(metadata={"help": "image files", "positional": True})
    templates: str | None = field(default=None, metadata={"help": "template set name or file (default: the 'default' set)"})
    top: int = field(default=5, metadata={"help": "labels shown per image"})
    json: bool = field(default=False, metadata={"help": "print JSON instead of tables"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, PredictConfig, run)


def run(cfg: PredictConfig) -> int:
    from zeroshift.predict import predict
    from zeroshift.zeroshot.labels import parse_labels

    labels = parse_labels(cfg.labels, files=True)
    results = predict(cfg.model, cfg.images, labels, templates=cfg.templates, runtime=cfg.runtime)
    if cfg.json:  # strict JSON: predict reports non-finite scores as a per-image error, never as NaN
        print(json.dumps({"model": cfg.model, "results": results}, indent=2, allow_nan=False))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: skipped ({r['error']})\n")
                continue
            rows = [(i + 1, x["label"], x["prob"]) for i, x in enumerate(r["ranking"][: cfg.top])]
            print_table(rows, ["rank", "label", "prob"], title=r["image"])
            print()
    failed = [r for r in results if "error" in r]
    if len(failed) == len(results):  # nothing classified: a script must not take this run for a result
        image, reason = failed[0]["image"], (str(failed[0]["error"]).strip() or "failed").splitlines()[0]
        print(f"error: none of the {len(results)} image(s) could be classified; the first, "
              f"{image}: {reason.removeprefix(f'{image}: ')}", file=sys.stderr)
        return 1
    return 0
