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
    out: str = field(default="results", metadata={
        "help": "folder for the JSON records (a run's also go into RUN/results, and into its model card)"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    quiet: bool = field(default=False, metadata={"help": "no progress bars (for logs); the results are still printed"})


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, EvalConfig, run)


def metric_rows(records: dict[str, dict]) -> list[tuple]:
    """The quickstart's report rows (value, 95% interval, chance, n) for every metric of every record."""
    from zeroshift.report import display, rows

    return display(rows(list(records.values()), shown=None))


def row_lines(records: dict[str, dict]) -> list[str]:
    """Per task: rows scored out of the source's rows, and why the others were not (the first few by name)."""
    lines = []
    for task, r in records.items():
        z = r.get("zeroshift", {})
        rows, unreadable, scored = z.get("rows", 0), z.get("skipped", 0), z.get("evaluated", 0)
        names = z.get("skipped_keys") or []
        why = [f"{unreadable} unreadable" + (f" ({', '.join(names[:5])}{', ...' if unreadable > 5 else ''})"
                                             if names else "")] if unreadable else []
        other = rows - unreadable - scored
        why += [f"{other} {'unlabelled' if task == 'zeroshot_classification' else 'uncaptioned'}"] if other else []
        lines.append(f"{task}: {scored} of {rows} rows scored" + (f"; skipped {', '.join(why)}" if why else ""))
    return lines


def run(cfg: EvalConfig) -> int:
    from zeroshift.report import HEADERS
    from zeroshift.zeroshot.evaluate import evaluate
    from zeroshift.zeroshot.records import record_filename

    model = cfg.model
    if len(cfg.data) > 1:  # several data specs: load the model once
        from zeroshift.specs import load, require

        require(model, "vlm", "model", command="eval")
        model = load(model, runtime=cfg.runtime)
    rows, lines, written = [], [], []
    for spec in cfg.data:  # each data spec in turn, one record per task
        records = evaluate(model, spec, templates=cfg.templates, task=cfg.task, out=cfg.out,
                           batch_size=cfg.batch_size, runtime=cfg.runtime, progress=not cfg.quiet)
        rows += metric_rows(records)
        lines += [f"{spec}: {line}" if len(cfg.data) > 1 else line for line in row_lines(records)]
        written += [Path(cfg.out) / record_filename(r) for r in records.values()]
    print_table(rows, HEADERS, title=f"model: {cfg.model}")
    for line in lines:
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0
