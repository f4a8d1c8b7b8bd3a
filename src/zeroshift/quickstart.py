"""The main job on the offline catalogue: evaluate the offline teacher zero-shot and write a report."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .report import HEADERS, bar_plot, display, markdown_table, rows


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = field(default="runs/quickstart", metadata={"help": "run folder for the report"})
    teacher: str = field(default="conse:effnet-lite2+minilm", metadata={"help": "the VLM to evaluate"})
    datasets: tuple[str, ...] = field(default=("fashion-mnist:test", "tuxpaint"),
                                      metadata={"help": "datasets to evaluate on"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})


def quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict:
    """Evaluate `cfg.teacher` on each dataset, write records, report.md, a plot and config.json."""
    from .specs import load
    from .zeroshot.evaluate import evaluate

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher = load(cfg.teacher, runtime=cfg.runtime)
    records, timings = [], []
    for data in cfg.datasets:
        t0 = time.perf_counter()
        recs = evaluate(teacher, data, out=out / "results", batch_size=cfg.batch_size, runtime=cfg.runtime,
                        progress=progress)
        records += recs.values()
        timings.append((cfg.teacher, data, round(time.perf_counter() - t0, 1)))
    table = rows(records)
    plot = bar_plot(table, out / "zeroshot.png", f"zero-shot, {cfg.teacher}")
    seconds = round(time.perf_counter() - started, 1)
    report = [
        "# zeroshift quickstart", "",
        f"Teacher `{cfg.teacher}` evaluated zero-shot (no training) with zeroshift {__version__}, in {seconds} s.", "",
        markdown_table(display(table), HEADERS), "",
        markdown_table(timings, ["model", "dataset", "seconds"]), "",
        f"![zero-shot results]({plot.name})", "",
        "Records in CLIP_benchmark's format are in `results/`; the resolved options in `config.json`.", "",
    ]
    (out / "report.md").write_text("\n".join(report))
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "version": __version__}, indent=2) + "\n")
    return {"records": records, "table": table, "seconds": seconds, "report": out / "report.md"}
