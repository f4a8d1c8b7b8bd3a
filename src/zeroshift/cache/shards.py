"""The files of a cache being written: each shard with its sidecar, the manifest written last, and
rank 0 waiting for the shards of the other ranks (and they for its manifest) under torchrun."""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import distributed as dist
from ..data.base import DataSource
from ..errors import CacheMismatch
from ..version import __version__
from .layout import FORMAT, LABELS, MANIFEST, META, entry_problem, read_json, read_manifest, shard_name, sidecar_name
from .store import CacheError, Identity, save_json, save_npy, verify_shard

WAIT_TIMEOUT_S = 1800.0  # give up waiting for other ranks after this long without a new shard
_POLL_S = 0.2


def base_manifest(identity: Identity, shard_rows: int, dim: int | None) -> dict:
    return {
        "format": FORMAT, "zeroshift_version": __version__,
        "model_spec": identity.model_spec, "transform": identity.transform,
        "data_spec": identity.data_spec, "fingerprint": identity.fingerprint, "rows": identity.rows,
        "dim": dim, "dtype": identity.dtype, "shard_rows": shard_rows,
        "n_shards": math.ceil(identity.rows / shard_rows), "shards": [], "complete": False,
    }


def sidecar_check(sidecar: dict) -> str:
    """The digest a sidecar carries of the rest of itself, so a damaged or edited one is recomputed, not trusted."""
    rest = {k: v for k, v in sidecar.items() if k != "check"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def sidecar_ok(out: Path, i: int, sidecar: dict | None, token: str, dtype: str) -> bool:
    """Shard i's sidecar is intact, made by this identity and layout, and its shard sound."""
    if not sidecar or sidecar.get("check") != sidecar_check(sidecar):
        return False
    if sidecar.get("token") != token or sidecar.get("index") != i or entry_problem(sidecar, i) is not None:
        return False
    dim, bad = sidecar.get("dim"), sidecar.get("bad")
    if not (isinstance(dim, int) and dim > 0 and isinstance(bad, list) and len(bad) == sidecar["n_bad"]):
        return False
    return verify_shard(out, sidecar, dim, dtype) is None


def write_shard(
    out: Path, i: int, start: int, end: int, pieces: list, bad: list[tuple[int, str]], dim: int,
    dtype: str, token: str, keys: Sequence[str],
) -> dict:
    """Assemble shard i (bad rows zero), refuse non-finite values, write it and its sidecar."""
    full = np.zeros((end - start, dim), dtype=np.float32)  # [rows, dim]
    for local, feats in pieces:
        if feats.shape[1] != dim:
            raise CacheError(f"model gave {feats.shape[1]}-d features, the cache holds {dim}-d ({shard_name(i)})")
        full[local] = feats
    if dtype == "uint8":
        exact = ((full >= 0) & (full <= 255) & (full == np.round(full))).all(axis=1)  # [rows]
        if not exact.all():
            first = start + int(np.flatnonzero(~exact)[0])
            raise CacheError(f"{shard_name(i)}: features of source row {first} (key {keys[first]!r}) are not whole "
                             "numbers in [0, 255], which dtype 'uint8' needs; the shard was not written")
    with np.errstate(over="ignore"):
        arr = full.astype(dtype)
    finite = np.isfinite(arr).all(axis=1)  # [rows]
    if not finite.all():
        first = start + int(np.flatnonzero(~finite)[0])
        why = ("beyond float16 range: use dtype='float32'" if np.isfinite(full).all()
               else "NaN or inf from the model")
        raise CacheError(
            f"{shard_name(i)}: {int((~finite).sum())} rows of features are {why} (first: source row {first}, "
            f"key {keys[first]!r}); the shard was not written"
        )
    sha = save_npy(out / shard_name(i), arr)
    bad = sorted(bad)
    sidecar = {
        "name": shard_name(i), "index": i, "start": start, "rows": end - start, "dim": dim, "dtype": dtype,
        "sha256": sha, "n_bad": len(bad), "bad_rows": [r - start for r, _ in bad],
        "bad": [{"row": r, "key": keys[r], "reason": why} for r, why in bad],
        "token": token, "rank": dist.rank(),
    }
    sidecar["check"] = sidecar_check(sidecar)
    save_json(out / sidecar_name(i), sidecar)
    return sidecar


def wait_for_shards(out: Path, n_shards: int, world: int, token: str, dtype: str, have: dict[int, dict],
                     timeout: float | None = None) -> None:
    """Rank 0: wait until every shard has a sound file and sidecar; fills `have`.

    Gives up after `timeout` seconds in which no new shard appeared, naming the missing ones.
    """
    timeout = WAIT_TIMEOUT_S if timeout is None else timeout
    seen: dict[int, tuple] = {}  # shard -> stamp of a (shard, sidecar) pair already found unsound
    last_progress = time.monotonic()
    while True:
        for i in range(n_shards):
            if i in have:
                continue
            try:
                stats = [(out / name).stat() for name in (shard_name(i), sidecar_name(i))]
            except OSError:
                continue
            stamp = tuple((st.st_ino, st.st_mtime_ns) for st in stats)
            if seen.get(i) == stamp:
                continue
            sc = read_json(out / sidecar_name(i))
            if sidecar_ok(out, i, sc, token, dtype):
                have[i] = sc
                last_progress = time.monotonic()
            else:
                seen[i] = stamp
        missing = [i for i in range(n_shards) if i not in have]
        if not missing:
            return
        if time.monotonic() - last_progress > timeout:
            names = ", ".join(f"{shard_name(i)} (rank {i % world})" for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise CacheError(
                f"waited {timeout:.0f}s without a new shard in {out}; missing {names}{more}: "
                "check those ranks' logs, then rerun the same embed to resume"
            )
        time.sleep(_POLL_S)


def wait_for_manifest(out: Path, n_shards: int, timeout: float | None = None) -> dict:
    """Other ranks: wait for rank 0's complete manifest, as long as shards keep appearing."""
    timeout = WAIT_TIMEOUT_S if timeout is None else timeout
    last, count = time.monotonic(), -1
    while True:
        manifest = read_manifest(out)
        if manifest and manifest.get("complete"):
            return manifest
        now_count = len(list(out.glob("shard-*.json")))
        if now_count != count:
            last, count = time.monotonic(), now_count
        if time.monotonic() - last > timeout:
            raise CacheError(
                f"waited {timeout:.0f}s for rank 0 to finish {out} ({count}/{n_shards} shards present): "
                "check rank 0's log, then rerun the same embed to resume"
            )
        time.sleep(_POLL_S)


def finalize(out: Path, identity: Identity, shard_rows: int, source: DataSource, sidecars: dict[int, dict]) -> dict:
    """Rank 0: labels, meta and the complete manifest (with their checksums), written last."""
    entries = [sidecars[i] for i in range(len(sidecars))]
    dims = {e["dim"] for e in entries}
    if len(dims) != 1:
        raise CacheMismatch(
            f"shards of {out} disagree on the feature width {sorted(dims)}: pass --overwrite or another --out"
        )
    labels = getattr(source, "labels", None)
    files = {}  # name -> sha256 of every file beside the shards that a reader uses
    if labels is not None:
        files[LABELS] = save_npy(out / LABELS, np.asarray(labels, dtype=np.int64))
    captions = getattr(source, "captions", None)
    files[META] = save_json(out / META, {
        "classes": None if source.classes is None else list(source.classes),
        "captions": None if captions is None else list(captions),
        "keys": list(source.keys),
    })
    manifest = base_manifest(identity, shard_rows, dims.pop())
    manifest["shards"] = [
        {k: e[k] for k in ("name", "start", "rows", "sha256", "n_bad", "bad_rows")} for e in entries
    ]
    manifest["n_bad"] = sum(e["n_bad"] for e in entries)
    manifest["skipped"] = [b for e in entries for b in e["bad"]]
    manifest["labels"] = LABELS if labels is not None else None
    manifest["meta"] = META
    manifest["files"] = files
    manifest["complete"] = True
    save_json(out / MANIFEST, manifest)
    return manifest
