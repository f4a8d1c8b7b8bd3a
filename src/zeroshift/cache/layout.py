"""The files of a feature-cache folder: their names, the format number, and what a sound manifest says.

Shared by the reader (store.py) and the writers (shards.py, arrays.py): the checks here turn a damaged
or hand-edited manifest, shard entry or sidecar into one phrase for an error, never an IndexError later.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

FORMAT = 2  # 2: labels.npy and meta.json have checksums in the manifest; sidecars check themselves
MANIFEST = "manifest.json"
META = "meta.json"
LABELS = "labels.npy"
DTYPES = ("float16", "float32", "uint8")  # uint8: whole numbers in [0, 255], e.g. decoded pixels
_SHA256 = re.compile(r"[0-9a-f]{64}")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def sidecar_name(i: int) -> str:
    return f"shard-{i:05d}.json"


def short_repr(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def load_json(path: Path) -> tuple[dict | None, str]:
    """A JSON object file's content, or (None, why not: 'is missing', 'is not valid JSON', ...)."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, "is missing"
    except OSError as e:
        return None, f"is unreadable ({type(e).__name__}: {e.strerror})"
    except ValueError:  # also UnicodeDecodeError
        return None, "is not valid JSON"
    if not isinstance(obj, dict):
        return None, f"holds a JSON {type(obj).__name__}, not an object"
    return obj, ""


def read_json(path: Path) -> dict | None:
    """A JSON object file's content, or None when it is absent, unreadable or not an object (a torn write never is)."""
    return load_json(path)[0]


def read_manifest(folder: Path) -> dict | None:
    return read_json(Path(folder) / MANIFEST)


def rebuild_hint(folder: Path, manifest: dict | None) -> str:
    """How to rebuild the cache in `folder`: rerun the embed that made it (its command when the manifest says)."""
    m = manifest or {}
    if m.get("transform") == "precomputed":
        return "write it again with write_features(..., overwrite=True)"
    model, data = m.get("model_spec"), m.get("data_spec")
    if not (isinstance(model, str) and isinstance(data, str)):
        return f"rerun the embed that made it to recompute it, or delete {folder}"
    words = ["--model", model, "--data", data]
    words += [] if m.get("dtype") in (None, "float32") else ["--dtype", str(m["dtype"])]
    words += [] if m.get("shard_rows") is None else ["--shard-rows", str(m["shard_rows"])]
    command = shlex.join(["zeroshift", "embed", *words, "--out", str(folder)])
    return f"rerun the embed that made it ({command}) to recompute it"


def is_count(x: Any, low: int = 0) -> bool:
    """x is an int (not a bool) of at least `low`."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def entry_problem(e: Any, k: int, start: int | None = None, rows: int | None = None) -> str | None:
    """What is wrong with shard k's entry (in a manifest, or its sidecar), as a phrase, or None. `start` and
    `rows`: where shard k must lie, when known."""
    if not isinstance(e, dict):
        return f"shard {k} is a JSON {type(e).__name__}, not an object"
    missing = [key for key in ("name", "start", "rows", "sha256", "n_bad", "bad_rows") if key not in e]
    if missing:
        return f"shard {k} has no {', '.join(missing)}"
    if e["name"] != shard_name(k):
        return f"shard {k} is named {short_repr(e['name'])}, not {shard_name(k)}"
    if not isinstance(e["sha256"], str) or not _SHA256.fullmatch(e["sha256"]):
        return f"shard {k}'s sha256 {short_repr(e['sha256'])} is not a sha256"
    placed = start is None or (e["start"], e["rows"]) == (start, rows)
    if not (is_count(e["start"]) and is_count(e["rows"], 1) and placed):
        want = "" if start is None else f", not start {start} and {rows} rows"
        return f"shard {k} holds start {short_repr(e['start'])} and {short_repr(e['rows'])} rows{want}"
    bad = e["bad_rows"]
    if not isinstance(bad, list) or not all(is_count(r) and r < e["rows"] for r in bad):
        return f"shard {k}'s bad_rows {short_repr(bad)} point outside its {e['rows']} rows"
    if e["n_bad"] != len(bad):
        return f"shard {k} has n_bad {short_repr(e['n_bad'])} but {len(bad)} bad_rows"
    return None


def manifest_problem(m: Any) -> str | None:
    """What makes the complete manifest `m` unusable, as a phrase for an error, or None."""
    if not isinstance(m, dict):
        return f"it is a JSON {type(m).__name__}, not an object"
    checks = {"rows": is_count(m.get("rows"), 1), "dim": is_count(m.get("dim"), 1),
              "shard_rows": is_count(m.get("shard_rows"), 1), "dtype": m.get("dtype") in DTYPES,
              "model_spec": isinstance(m.get("model_spec"), str), "shards": isinstance(m.get("shards"), list),
              "files": isinstance(m.get("files"), dict), "labels": m.get("labels") in (None, LABELS)}
    for key, ok in checks.items():
        if not ok:
            return f"{key} is missing" if key not in m else f"{key} is {short_repr(m[key])}"
    rows, step, shards = m["rows"], m["shard_rows"], m["shards"]
    if len(shards) != math.ceil(rows / step):
        return f"it lists {len(shards)} shards, not the {math.ceil(rows / step)} of {rows} rows in shards of {step}"
    for k, e in enumerate(shards):
        problem = entry_problem(e, k, k * step, min(step, rows - k * step))
        if problem:
            return problem
    for name in (META, LABELS) if m["labels"] else (META,):
        sha = m["files"].get(name)
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            return f"files has no sha256 for {name}"
    return None
