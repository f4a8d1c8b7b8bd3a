"""Atomic writes: a file is written under a temporary name beside its target and renamed when complete,
so a kill mid-write never leaves a file that looks finished (the rename is atomic on POSIX).

Temporary names are `.NAME.PID-RANDOM.tmp`; `clean_temp(folder)` removes those a killed writer left.
`durable=True` also fsyncs the file and its folder, for files a resumed run relies on (cache shards,
checkpoints)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike) -> Path:
    """A unique temporary name beside `path` (same folder, so the final rename never crosses a filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path` through: renamed to `path` when the block ends without
    error, removed when it raises. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2, durable: bool = False) -> Path:
    """Write `payload` as JSON (non-JSON values through str; NaN refused) to `path` atomically."""
    return write_text(path, json.dumps(payload, indent=indent, default=str, allow_nan=False) + "\n", durable)


def clean_temp(folder: str | os.PathLike, older_than: float = 0.0, name: str | None = None) -> list[Path]:
    """Remove the temporary files a killed writer left in `folder`; returns them. With `older_than`
    (seconds), only files unmodified that long go, so a live writer sharing the folder keeps its own.
    With `name`, only the temporary files of `folder / name` go (as temp_path names them): for a folder
    zeroshift does not own, where another program's `.*.tmp` files are none of its business."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    own = None if name is None else re.compile(rf"\.{re.escape(name)}\.\d+-[0-9a-f]{{8}}{re.escape(TMP_SUFFIX)}")
    for tmp in sorted(folder.glob(f".*{TMP_SUFFIX}")):
        if own is not None and not own.fullmatch(tmp.name):
            continue
        try:
            if older_than and now - tmp.stat().st_mtime <= older_than:
                continue
        except OSError:  # already gone
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
