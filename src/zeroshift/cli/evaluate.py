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
    dataset: str = field(metadata={"help": "data spec with classes or captions"})
    templates: str | None = field(default=None, metadata={"help": "template set name or file (default: keyed by dataset)"})
    task: str = field(default="auto", metadata={"help": "what to measure", "choices": TASKS})
    out: str = field(default="results", metadata={"help": "folder for the JSON records"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    quiet: bool = field(default=False, metadata={"help": "no progress bars (for logs); the results are still printed"})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, EvalConfig, run)


def metric_rows(records: dict[str, dict]) -> list[tuple]:
    """One (dataset, task, metric, value) row per metric of every record."""
    return [(r["dataset"], task, name, value)
            for task, r in records.items() for name, value in r["metrics"].items()]


def run(cfg: EvalConfig) -> int:
    from zeroshift.zeroshot.evaluate import evaluate
    from zeroshift.zeroshot.records import record_filename

    records = evaluate(cfg.model, cfg.dataset, templates=cfg.templates, task=cfg.task, out=cfg.out,
                       batch_size=cfg.batch_size, runtime=cfg.runtime, progress=not cfg.quiet)
    print_table(metric_rows(records), ["dataset", "task", "metric", "value"], title=f"model: {cfg.model}")
    for r in records.values():
        print(f"wrote {Path(cfg.out) / record_filename(r)}")
    return 0
