"""Evaluation records in CLIP_benchmark's JSON format, one file per (dataset, model, task).

A record is `{"dataset", "model", "pretrained", "task", "metrics", "language"}` as CLIP_benchmark's
`cli.py` writes it, so `clip_benchmark build results/*.json` tabulates ours beside theirs. A model spec
is split at its first '@' like open_clip's (model, pretrained) pair: `openclip:ViT-B-32@laion2b_s34b_b79k`
-> model `openclip:ViT-B-32`, pretrained `laion2b_s34b_b79k`; a spec without a tag has pretrained "".
Optional keys: `classnames` and `templates` (CLIP_benchmark's --dump_classnames/--dump_templates) and
`zeroshift` (the full spec, data fingerprint, row counts, library version).

Files are named as CLIP_benchmark names them, `{dataset}_{pretrained}_{model}_{language}_{task}.json`,
each field made filename-safe, and written atomically (temporary file, then os.replace).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..errors import ZeroshiftError
from ..io import write_text
from ..paths import user_path

LANGUAGE = "en"
TASKS = ("zeroshot_classification", "zeroshot_retrieval")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_MAX_FIELD = 80


def split_model_spec(spec: str) -> tuple[str, str]:
    """(model, pretrained): the spec before and after its first '@' ('' when it has no tag)."""
    model, _, pretrained = spec.partition("@")
    return model, pretrained


def make_record(dataset: str, model_spec: str, task: str, metrics: dict[str, float], **extra) -> dict:
    """A CLIP_benchmark result record; `extra` adds optional top-level keys (classnames, templates, zeroshift)."""
    if task not in TASKS:
        raise ZeroshiftError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    model, pretrained = split_model_spec(model_spec)
    record = {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": task,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "language": LANGUAGE,
    }
    record.update(extra)
    return record


def safe_name(text: str) -> str:
    """`text` as one filename field: runs of other characters become '_'; long fields are cut and hashed."""
    name = _UNSAFE.sub("_", text).strip("_") if text else ""
    if len(name) > _MAX_FIELD:
        name = name[: _MAX_FIELD - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return name


def record_filename(record: dict) -> str:
    """CLIP_benchmark's default output name, `{dataset}_{pretrained}_{model}_{language}_{task}.json`."""
    fields = [record["dataset"], record["pretrained"], record["model"], record["language"], record["task"]]
    return "_".join(safe_name(f) for f in fields) + ".json"


def write_record(record: dict, out: str | Path) -> Path:
    """Write `record` into folder `out` atomically; returns the file's path."""
    path = user_path(out) / record_filename(record)
    write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def read_records(folder: str | Path) -> list[dict]:
    """Every record (a JSON file with dataset, model, task and metrics) in `folder`, by file name."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and {"dataset", "model", "task", "metrics"} <= data.keys():
            records.append(data)
    return records
