"""`write_features`: features computed elsewhere (another tool, a synthetic generator) into a cache.

The result is the same checked, sharded folder `embed` writes, so every reader (`load_features`,
`transfer`, `align` on locked towers) takes it. Rows arrive in chunks of any size and are written
shard by shard, so a cache far larger than memory is written in bounded memory.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import CacheError
from ..version import __version__
from .layout import DTYPES, FORMAT, LABELS, MANIFEST, META, shard_name
from .store import Features, load_features, save_json, save_npy


def write_features(
    folder: str | os.PathLike, chunks: Iterable[np.ndarray], *, rows: int, dim: int, model: str, data: str,
    dtype: str = "float16", shard_rows: int = 4096, labels: np.ndarray | None = None,
    classes: list[str] | None = None, fingerprint: str | None = None, overwrite: bool = False,
) -> Features:
    """Write `rows` feature rows ([n_i, dim] arrays from `chunks`, in order) as a complete cache in `folder`.

    `model` and `data` name what the features came from; two caches with the same `data` and
    `fingerprint` (default: a hash of `data` and `rows`) count as the same images, so a bridge can
    be fitted on them paired. The manifest is written last, after every shard.
    """
    if dtype not in DTYPES:
        raise CacheError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if rows < 1 or dim < 1 or shard_rows < 1:
        raise CacheError(f"rows, dim and shard_rows must be at least 1 (got {rows}, {dim}, {shard_rows})")
    if labels is not None and np.shape(labels) != (rows,):
        raise CacheError(f"labels of shape {np.shape(labels)} do not give one label to each of the {rows} rows")
    out = Path(folder)
    if (out / MANIFEST).exists():
        if not overwrite:
            raise CacheError(f"{out} already holds a feature cache: pass overwrite=True or another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or hashlib.sha256(f"{data}/{rows}".encode()).hexdigest()[:16]
    shards: list[dict] = []
    pending: list[np.ndarray] = []  # rows waiting for their shard
    written = 0

    def flush(n: int) -> None:
        nonlocal pending, written
        block = np.concatenate(pending) if len(pending) > 1 else pending[0]  # [>= n, dim]
        pending = [block[n:]] if len(block) > n else []
        arr = _checked(block[:n], dtype, written)
        name = shard_name(len(shards))
        shards.append({"name": name, "start": written, "rows": n, "sha256": save_npy(out / name, arr),
                       "n_bad": 0, "bad_rows": []})
        written += n

    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != dim:
            raise CacheError(f"a chunk of shape {chunk.shape} does not hold {dim}-d rows; {out} was not finished")
        pending.append(chunk)
        while sum(len(p) for p in pending) >= shard_rows and written + shard_rows <= rows:
            flush(shard_rows)
        if written + sum(len(p) for p in pending) > rows:
            raise CacheError(f"the chunks hold more than the {rows} rows announced; {out} was not finished")
    left = sum(len(p) for p in pending)
    if written + left != rows:
        raise CacheError(f"the chunks held {written + left} rows, not the {rows} announced; {out} was not finished")
    if left:
        flush(left)
    files = {}  # name -> sha256, as embed's manifest has them
    if labels is not None:
        files[LABELS] = save_npy(out / LABELS, np.asarray(labels, dtype=np.int64))
    files[META] = save_json(out / META, {"classes": classes, "captions": None, "keys": None})
    save_json(out / MANIFEST, {
        "format": FORMAT, "zeroshift_version": __version__, "model_spec": model, "transform": "precomputed",
        "data_spec": data, "fingerprint": fingerprint, "rows": rows, "dim": dim, "dtype": dtype,
        "shard_rows": shard_rows, "n_shards": math.ceil(rows / shard_rows), "shards": shards,
        "n_bad": 0, "skipped": [], "labels": LABELS if labels is not None else None, "meta": META,
        "files": files, "complete": True,
    })
    return load_features(out, verify=False)


def _checked(block: np.ndarray, dtype: str, start: int) -> np.ndarray:
    """`block` cast to `dtype`, refusing rows that do not survive the cast."""
    with np.errstate(over="ignore", invalid="ignore"):
        arr = block.astype(dtype)
    if arr.dtype.kind == "f":
        ok = np.isfinite(arr).all(axis=1)  # [n]
    else:
        ok = ((block >= 0) & (block <= 255) & (block == np.round(block))).all(axis=1)  # [n]
    if not ok.all():
        raise CacheError(f"row {start + int(np.flatnonzero(~ok)[0])} is NaN, inf or beyond {dtype}'s range; "
                         "the cache was not finished")
    return arr
