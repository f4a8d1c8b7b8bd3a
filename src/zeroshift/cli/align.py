"""`zeroshift align`: OTTER, a new VLM from a pretrained image tower and a sentence encoder."""
from __future__ import annotations

import argparse

from .options import add_options, from_args
from .table import print_table


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.methods.align import AlignConfig

    add_options(parser, AlignConfig)
    parser.set_defaults(run=lambda ns: run(from_args(AlignConfig, ns)))


def run(cfg) -> int:
    from zeroshift.methods.align import align
    from zeroshift.zeroshot.records import read_records

    vlm = align(cfg)
    rows = [(r["dataset"], r["task"], k, v) for r in read_records(f"{cfg.out}/results")
            for k, v in r["metrics"].items() if k in ("acc1", "acc5", "flat_hit@5", "image_retrieval_recall@5", "text_retrieval_recall@5")]
    if rows:
        print_table(rows, ["dataset", "task", "metric", "value"], title=f"\n{vlm.spec}")
    print(f"run: {cfg.out}  (use it as --model run:{cfg.out})")
    return 0
