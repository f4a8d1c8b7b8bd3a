"""What a training command says when it ends: a few lines on what was trained and how it scored.

    transfer: 1 epoch, 13 steps over 392 rows in 14.2 s, final loss 0.183 (mse 0.05, pgkd 0.13)
    eval tuxpaint[1::2]: acc1 0.201 [0.17, 0.23]; teacher 0.221 -> keeps 0.91 of the teacher

The training figures are the "summary" of the run's config.json (`training`), the evaluation figures
OUT/results/summary.json (`evaluation`), beside the CLIP_benchmark records of the model (OUT/results)
and of its teacher on the same data (OUT/results/teacher). `lines` reads both back, so whatever
prints them (the CLI, a quickstart, a card) shows the same numbers. A run without a teacher (align) is
set beside chance instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cache.embed import short_spec
from ..paths import user_path
from ..report import PROPORTIONS, chance, wilson_interval

FILE = "summary.json"  # in OUT/results
HEADLINE = {"zeroshot_classification": "acc1", "zeroshot_retrieval": "image_retrieval_recall@5"}


def training(command: str, rows: int, history: list[dict], seconds: float, resumed: int | None) -> dict[str, Any]:
    """The training figures of a run: rows, epochs, steps, final loss (and its terms), seconds, resume step.
    `history` is the loop's logged rows (empty for a closed form)."""
    losses = [r for r in history if "loss" in r]
    last = losses[-1] if losses else {}
    return {"command": command, "rows": int(rows),
            "epochs": max((int(r["epoch"]) + 1 for r in history), default=0),
            "steps": max((int(r["step"]) for r in history), default=0),
            "final_loss": last.get("loss"),
            "final_terms": {k[5:]: v for k, v in last.items() if k.startswith("loss/")},
            "seconds": round(seconds, 2), "resumed_from_step": resumed,
            "kept": next(({k: r[k] for k in ("kept_epoch", "kept_by", "kept_score") if k in r}
                          for r in reversed(history) if "kept_by" in r), None)}


def evaluation(records: dict[str, dict], teacher: dict[str, dict] | None, dataset: str, model: str,
               teacher_spec: str | None) -> dict[str, Any]:
    """The headline metric of each task of the model's `records`, its 95% interval where it is a
    proportion, chance, and the teacher's value on the same data with the share the model keeps."""
    tasks = []
    for task, record in records.items():
        metric = HEADLINE.get(task)
        if metric not in record["metrics"]:
            continue
        value, n = float(record["metrics"][metric]), int(record.get("zeroshift", {}).get("evaluated", 0))
        theirs = None if not teacher or task not in teacher else teacher[task]["metrics"].get(metric)
        tasks.append({"task": task, "metric": metric, "value": value, "n": n,
                      "interval": list(wilson_interval(value, n)) if any(p in metric for p in PROPORTIONS) else None,
                      "chance": chance(record, metric), "teacher": theirs,
                      "keeps": None if not theirs else round(value / theirs, 4)})
    return {"dataset": dataset, "model": model, "teacher": teacher_spec, "tasks": tasks}


def write_evaluation(summary: dict[str, Any], results: Path) -> Path:
    """OUT/results/summary.json, atomically."""
    from ..io import write_json

    path = Path(results) / FILE
    write_json(path, summary)
    return path


def _number(v: float) -> str:
    return f"{v:.3g}"


def training_line(t: dict[str, Any]) -> str:
    """"transfer: 1 epoch, 13 steps over 392 rows in 14.2 s, final loss 0.183 (mse 0.05, pgkd 0.13)"."""
    if not t["steps"]:
        return f"closed form over {t['rows']} rows in {t['seconds']:.1f} s"
    epochs = f"{t['epochs']} epoch{'s' if t['epochs'] != 1 else ''}"
    resumed = f" (resumed from step {t['resumed_from_step']})" if t.get("resumed_from_step") else ""
    text = f"{epochs}, {t['steps']} steps{resumed} over {t['rows']} rows in {t['seconds']:.1f} s"
    if t.get("final_loss") is not None:
        terms = t.get("final_terms") or {}
        parts = ", ".join(f"{k} {_number(v)}" for k, v in terms.items())
        text += f", final loss {_number(t['final_loss'])}" + (f" ({parts})" if len(terms) > 1 else "")
    kept = t.get("kept") or {}
    if kept.get("kept_epoch") is not None:  # chosen on the held-out split
        epoch = "the start" if kept["kept_epoch"] < 0 else f"epoch {kept['kept_epoch'] + 1}"
        text += f"; kept {epoch} ({kept['kept_by'].replace('_', ' ')} {kept['kept_score']:.3f})"
    return text


def task_line(task: dict[str, Any]) -> str:
    """"acc1 0.201 [0.17, 0.23]; teacher 0.221 -> keeps 0.91 of the teacher" (or chance, without one)."""
    text = f"{task['metric']} {task['value']:.3f}"
    if task.get("interval"):
        lo, hi = task["interval"]
        text += f" [{lo:.2f}, {hi:.2f}] on {task['n']}"
    if task.get("teacher") is not None:
        text += f"; teacher {task['teacher']:.3f}"
        text += f" -> keeps {task['keeps']:.2f} of the teacher" if task.get("keeps") is not None else ""
    elif task.get("chance") is not None:
        text += f"; chance {task['chance']:.3f} (no teacher to compare with)"
    return text


def lines(out: str | Path) -> list[str]:
    """The summary of the finished run in `out`, as aligned lines; [] for a run written without one."""
    out = user_path(out)
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    rows: list[tuple[str, str]] = []
    t = config.get("summary") if isinstance(config, dict) else None
    if isinstance(t, dict):
        rows.append((f"{t['command']}:", training_line(t)))
    try:
        e = json.loads((out / "results" / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        e = None
    if isinstance(e, dict):
        label = f"eval {short_spec(e['dataset'])}:"
        rows += [(label, task_line(task)) for task in e["tasks"]]
        if not e["tasks"]:
            rows.append((label, "no headline metric (see results/)"))
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{label:<{width}} {text}" for label, text in rows]
