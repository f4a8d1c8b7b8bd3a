"""A small persistent cache of measured costs (speeds, sizes): a measurement worth seconds or minutes is
made once per machine and key, then read back.

    cost = cached({"what": "image_cost", "spec": "conse:effnet-lite2+minilm", "threads": 2}, measure)

The result of `measure()` (a JSON dict) is stored at `$ZEROSHIFT_HOME/costs/<sha1 of the key>.json`, the
key being the caller's dict plus the machine (host name, CPU count, architecture, onnxruntime, torch and
zeroshift versions): a timing from another machine or another runtime version is never reused. A file
that cannot be read, or holds another key, is measured again and overwritten; one that cannot be written
(a read-only home) leaves the result uncached. Caching is only right for a model that is the same model
every time its spec is read: see `stable_spec`.

This module sits at the ground floor (io, paths, version only), so models/, export/ and methods/ may use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Callable

from .io import write_json
from .paths import home, user_path
from .version import __version__

FOLDER = "costs"


def _version(*distributions: str) -> str | None:
    """The installed version of the first of `distributions` found, without importing it."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict:
    """What a measured cost depends on besides the caller's key: this machine and its runtimes."""
    return {"node": platform.node(), "cpus": os.cpu_count(), "arch": platform.machine(),
            "onnxruntime": _version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
            "torch": _version("torch"), "zeroshift": __version__}


def full_key(key: dict) -> dict:
    """The caller's key with the machine added (under "machine", which a caller's key may not use)."""
    return {**key, "machine": machine()}


def canonical(key: dict) -> str:
    """One JSON text per key: sorted keys, no spaces, non-JSON values through str."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def cost_path(key: dict, folder: Path | None = None) -> Path:
    """Where the result for the caller's `key` is stored on this machine."""
    return _stored_at(full_key(key), folder)


def _stored_at(full: dict, folder: Path | None) -> Path:
    digest = hashlib.sha1(canonical(full).encode("utf-8")).hexdigest()
    return user_path(folder if folder is not None else home() / FOLDER) / f"{digest}.json"


def _read(path: Path, key: dict) -> dict | None:
    """The stored result for `key`; None when the file is missing, unreadable, truncated or holds another key."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != json.loads(canonical(key)):
        return None
    result = stored.get("result")
    return result if isinstance(result, dict) else None


def cached(key: dict, compute: Callable[[], dict], folder: Path | None = None) -> dict:
    """`compute()`'s result for `key` on this machine: read from the cache when stored, else computed and
    stored (atomically). The result comes back as JSON gives it (tuples as lists), the same on every call."""
    if "machine" in key:
        raise ValueError("a cost cache key may not hold 'machine': the cache adds it")
    key = full_key(key)
    path = _stored_at(key, folder)
    found = _read(path, key)
    if found is not None:
        return found
    result = compute()
    try:
        text = json.dumps(result, default=str, allow_nan=False)  # NaN is not JSON: such a result is not stored
    except ValueError:
        return result
    result = json.loads(text)
    try:
        write_json(path, {"key": json.loads(canonical(key)), "result": result})
    except OSError:  # a read-only or full home: the measurement stands, uncached
        pass
    return result


def stable_spec(spec: str) -> bool:
    """Whether `spec` names the same weights every time it is read, so that a cost measured once may be
    reused: a catalogue or hub model. Not a run folder (`run:...`: the folder's weights change when a run
    is trained again under the same spec), not a random model (`random`, `seed=`: random weights whose
    spec does not pin what they compute), not a local file or folder (an argument starting with /, . or
    ~: its contents can change under the same name)."""
    if spec.startswith("run:") or "random" in spec or "seed=" in spec:
        return False
    argument = spec.split(":", 1)[1] if ":" in spec else spec
    return not argument.startswith(("/", ".", "~"))
