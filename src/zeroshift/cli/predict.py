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
    labels: str = field(metadata={"help": "at least two labels, 'a,b,c', or a label file: a value with no comma that "
                                          "ends in .txt, .csv or .json or holds a / is read as a file (one label "
                                          "per line, blank and '#' lines skipped; .json: a list of strings)"})
    images: tuple[str, ...] = field(metadata={"help": "image files or folders (a folder: its images, recursively)",
                                              "positional": True})
    templates: str | None = field(default=None, metadata={"help": "template set name or file"})
    top: int = field(default=5, metadata={"help": "labels shown per image"})
    json: bool = field(default=False, metadata={"help": "print JSON instead of tables"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, PredictConfig, run)


def run(cfg: PredictConfig) -> int:
    from zeroshift.ranking import predict

    results = predict(cfg.model, cfg.images, cfg.labels, templates=cfg.templates, runtime=cfg.runtime)
    failed = [r for r in results if "error" in r]
    if cfg.json:  # strict JSON: predict reports non-finite scores as a per-image error, never as NaN
        print(json.dumps({"model": cfg.model, "results": results}, indent=2, allow_nan=False))
    else:
        for r in results:
            if "error" in r:  # stderr: stdout holds only rankings; when all failed, one error line says so
                if len(failed) < len(results):
                    print(f"skipped {r['image']}: {_reason(r)}", file=sys.stderr)
                continue
            rows = [(i + 1, x["label"], f"{x['prob']:.4f}") for i, x in enumerate(r["ranking"][: cfg.top])]
            print_table(rows, ["rank", "label", "prob"], title=r["image"])
            print()
    if len(failed) == len(results):  # nothing classified: a script must not take this run for a result
        print(f"error: none of the {len(results)} image(s) could be classified; the first, "
              f"{failed[0]['image']}: {_reason(failed[0])}", file=sys.stderr)
        return 1
    return 0


def _reason(result: dict) -> str:
    """The first line of an image's error, without the image's name repeated in front."""
    reason = (str(result["error"]).strip() or "failed").splitlines()[0]
    return reason.removeprefix(f"{result['image']}: ")
