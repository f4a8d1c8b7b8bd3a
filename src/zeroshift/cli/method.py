"""What the training commands (transfer, distill, align) share: options generated from the method's
config dataclass, and after the run a table of its evaluation records."""
from __future__ import annotations

import argparse
import importlib
from typing import Any

from .options import command
from .table import print_table

SHOWN = ("acc1", "acc5", "flat_hit@5", "image_retrieval_recall@5", "text_retrieval_recall@5")


def configure_method(parser: argparse.ArgumentParser, config: type, method: str) -> None:
    """Add the options of `config` (a torch-free dataclass); when parsed, import `zeroshift.methods.<method>`
    and run its function of that name, then the results table."""
    command(parser, config, lambda cfg: run_method(method, cfg))


def run_method(method: str, cfg: Any) -> int:
    from zeroshift.zeroshot.records import read_records

    train = getattr(importlib.import_module(f"zeroshift.methods.{method}"), method)
    vlm = train(cfg)
    rows = [(r["dataset"], r["task"], k, v) for r in read_records(f"{cfg.out}/results")
            for k, v in r["metrics"].items() if k in SHOWN]
    if rows:
        print_table(rows, ["dataset", "task", "metric", "value"], title=f"\n{vlm.spec}")
    print(f"run: {cfg.out}  (use it as --model run:{cfg.out})")
    return 0
