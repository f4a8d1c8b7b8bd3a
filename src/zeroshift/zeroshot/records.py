"""Evaluation records in CLIP_benchmark's JSON format, one file per (dataset, model, task).

A record is `{"dataset", "model", "pretrained", "task", "metrics", "language"}` as CLIP_benchmark's
`cli.py` writes it, so `clip_benchmark build results/*.json` tabulates ours beside theirs. A model spec
is split at its first '@' like open_clip's (model, pretrained) pair: `openclip:ViT-B-32@laion2b_s34b_b79k`
-> model `openclip:ViT-B-32`, pretrained `laion2b_s34b_b79k`; a spec without a tag has pretrained "".
Optional keys: `classnames` and `templates` (CLIP_benchmark's --dump_classnames/--dump_templates) and
`zeroshift` (the full spec, data fingerprint, row counts, library version).

Files are named as CLIP_benchmark names them, `{dataset}_{pretrained}_{model}_{language}_{task}.json`,
plus `_{templates}` for a classification record that names its templates (the packaged set's name, else
`tpl-` and a digest of the prompts), so evaluating with other templates never overwrites a record. Each
field is made filename-safe; a spec holding an absolute or home path (`folder:/data/x`) is shortened to
its scheme, last path part and a digest of the whole spec, so no file name carries a machine's paths.
Files are written atomically (temporary file, then os.replace).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..data.templates import get_templates, template_sets
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


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def pathless(spec: str) -> str:
    """`spec` without its machine's paths: a spec whose argument is an absolute or home path
    (`folder:/home/me/imgs`, `run:~/runs/b`) -> scheme, last path part and a digest (`folder:imgs-1a2b3c4d`)."""
    scheme, sep, arg = spec.partition(":")
    path = arg if sep else spec
    if not (path.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", path)):
        return spec
    last = re.split(r"[\\/]+", path.rstrip("/\\"))[-1] or "root"
    return (f"{scheme}:" if sep else "") + f"{last}-{_digest(spec)}"


def templates_tag(templates: list[str]) -> str:
    """A short name for a list of prompt templates: the packaged set it equals, else `tpl-<digest>`."""
    for name in template_sets():
        if get_templates(name) == list(templates):
            return name
    return "tpl-" + _digest("\n".join(templates))


def record_filename(record: dict) -> str:
    """CLIP_benchmark's default output name, `{dataset}_{pretrained}_{model}_{language}_{task}.json`, with
    `_{templates}` before `.json` when the record names its templates; no field holds an absolute path."""
    fields = [pathless(record["dataset"]), record["pretrained"], pathless(record["model"]), record["language"],
              record["task"]]
    if record["task"] == "zeroshot_classification" and record.get("templates"):
        fields.append(templates_tag(record["templates"]))
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
