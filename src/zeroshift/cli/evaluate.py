"""`zeroshift eval`: zero-shot classification / retrieval, one CLIP_benchmark JSON per run."""
from __future__ import annotations

import argparse
from pathlib import Path
from dataclasses import dataclass, field

from .options import command
from .table import print_table

TASKS = ["auto", "zeroshot_classification", "zeroshot_retrieval"]


@dataclass(frozen=True)
class EvalConfig:
    model: str = field(metadata={"help": "model spec (any VLM)"})
    data: tuple[str, ...] = field(metadata={
        "help": "one or more data specs with classes or captions, each evaluated in turn", "aliases": ("--dataset",)})
    templates: str | None = field(default=None, metadata={"help": "template set name or file (default: keyed by dataset)"})
    task: str = field(default="auto", metadata={"help": "what to measure", "choices": TASKS})
    out: str = field(default="results", metadata={"help": "folder for the JSON records"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, EvalConfig, run)


def metric_rows(records: dict[str, dict]) -> list[tuple]:
    """One (dataset, task, metric, value) row per metric of every record."""
    return [(r["dataset"], task, name, value)
            for task, r in records.items() for name, value in r["metrics"].items()]


def run(cfg: EvalConfig) -> int:
    from zeroshift.zeroshot.evaluate import evaluate
    from zeroshift.zeroshot.records import record_filename

    rows, written = [], []
    for spec in cfg.data:  # each data spec in turn, one record per task
        records = evaluate(cfg.model, spec, templates=cfg.templates, task=cfg.task, out=cfg.out,
                           batch_size=cfg.batch_size, runtime=cfg.runtime)
        rows += metric_rows(records)
        written += [Path(cfg.out) / record_filename(r) for r in records.values()]
    print_table(rows, ["dataset", "task", "metric", "value"], title=f"model: {cfg.model}")
    for path in written:
        print(f"wrote {path}")
    return 0
