"""`embed`: a model's image features for a data source, into a sharded, resumable cache.

Rows [i * shard_rows, (i + 1) * shard_rows) of the source form shard i. A DataLoader decodes and
transforms images in worker processes; the model encodes them in this one. Each finished shard is
written atomically with a sidecar holding its checksum and bad rows, so a rerun after an interruption
keeps every finished shard and computes only the rest. Under torchrun, rank r computes the shards
i with i % world == r; rank 0 checks every shard and writes the manifest.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import distributed as dist
from .. import specs
from ..data.base import BadImage, DataSource
from ..errors import CacheMismatch, DataError, ZeroshiftError
from ..io import clean_temp
from ..models.transforms import one_thread, split_batchable
from ..version import __version__
from .store import (
    DTYPES,
    FORMAT,
    LABELS,
    MANIFEST,
    META,
    CacheError,
    Features,
    Identity,
    check_compatible,
    default_dir,
    describe_transform,
    read_json,
    read_manifest,
    save_json,
    save_npy,
    shard_name,
    sidecar_name,
    verify_shard,
)

DEFAULT_SHARD_ROWS = 4096
WAIT_TIMEOUT_S = 1800.0  # give up waiting for other ranks after this long without a new shard
_POLL_S = 0.2


class _Rows(Dataset):
    """Row i of a source as (i, transformed image or None, why it is bad or None)."""

    def __init__(self, source: DataSource, transform: Any) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            with one_thread():
                return i, self.transform(self.source.load_image(i)), None
        except (BadImage, OSError, Image.DecompressionBombError) as e:  # PIL decodes lazily
            return i, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
    """-> (source rows of good images [V], their images [V, 3, H, W] or None, [(row, reason)] of bad ones)."""
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, why) for i, x, why in items if x is None]
    rows = torch.tensor([i for i, _ in good], dtype=torch.long)
    if not good:
        return rows, None, bad
    try:
        images = torch.stack([x for _, x in good])
    except RuntimeError as e:
        shapes = sorted({tuple(x.shape) for _, x in good})
        raise DataError(
            f"the image transform gave tensors of different shapes {shapes}: it must resize and crop"
        ) from e
    return rows, images, bad


def _resolve_model(model: Any, runtime: str, device: str | None) -> tuple[Any, torch.device]:
    if isinstance(model, str):
        if device is None:
            device = f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu"
        model = specs.load(model, runtime=runtime, device=device)
    missing = [a for a in ("spec", "image_transform", "encode_image") if not hasattr(model, a)]
    if missing:
        raise ZeroshiftError(
            f"embed needs a model spec or an object with spec, image_transform and encode_image; "
            f"{type(model).__name__} lacks {', '.join(missing)}"
        )
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else "cpu"
    return model, torch.device(device)


def _default_workers(rows: _Rows, todo: Sequence[int], encode: Any, dev: torch.device) -> int:
    """Worker processes for decoding, from a probe of a few rows and one small forward pass.

    None for small jobs, or when decoding costs little next to the model (under a quarter of its time
    per image): worker start-up and inter-process copies then cost more than they save, and on a CPU
    the workers take cores from the model (measured, effnet-lite2 on Fashion-MNIST: 93 img/s with no
    worker, 83 with two). Otherwise, on a CPU, two workers (fewer with fewer cores per rank), which
    overlap image decoding (JPEG, PNG) with encoding; on a GPU, this rank's cores less one (at most 16):
    one core decodes a 500 x 375 JPEG into a 224 px input in 2.3 ms, while an H100 encodes with
    ResNet-50 (fp32) in 0.17 ms.
    """
    if len(todo) < 1024:
        return 0
    seconds, images = [], []  # per probed image; the fastest is the least disturbed by other load
    for i in todo[:: max(1, len(todo) // 8)][:8]:
        t0 = time.perf_counter()
        _, x, _ = rows[i]
        seconds.append(time.perf_counter() - t0)
        if x is not None:
            images.append(x)
    if images:
        batch = torch.stack(images[:4]).to(dev)  # [<=4, 3, H, W]
        encode(batch)  # warm-up
        t0 = time.perf_counter()
        encode(batch)
        model_seconds = (time.perf_counter() - t0) / len(batch)
    else:
        model_seconds = 0.0
    if min(seconds) < max(1e-3, 0.25 * model_seconds):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if dev.type == "cuda":  # a GPU outpaces any one core's decoding, and the cores are free for it
        return max(1, min(per_rank - 1, 16))
    return max(0, min(2, per_rank))


def _clear(out: Path) -> None:
    """Remove what embed writes in `out` (and nothing else)."""
    for pattern in ("shard-*.npy", "shard-*.json", MANIFEST, META, LABELS):
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)
    clean_temp(out)


def _base_manifest(identity: Identity, shard_rows: int, dim: int | None) -> dict:
    return {
        "format": FORMAT, "zeroshift_version": __version__,
        "model_spec": identity.model_spec, "transform": identity.transform,
        "data_spec": identity.data_spec, "fingerprint": identity.fingerprint, "rows": identity.rows,
        "dim": dim, "dtype": identity.dtype, "shard_rows": shard_rows,
        "n_shards": math.ceil(identity.rows / shard_rows), "shards": [], "complete": False,
    }


def _sidecar_ok(out: Path, i: int, sidecar: dict | None, token: str, dtype: str) -> bool:
    if not sidecar or sidecar.get("token") != token or sidecar.get("index") != i:
        return False
    return verify_shard(out, sidecar, sidecar["dim"], dtype) is None


def embed(
    model: Any,
    data: str | DataSource,
    out: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    shard_rows: int | None = None,
    workers: int | None = None,
    dtype: str = "float32",
    runtime: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    device: str | None = None,
) -> Features:
    """Embed every image of `data` with `model` into the cache folder `out`; returns its Features.

    `model`: a spec or an object with `spec`, `image_transform` and `encode_image` (ImageEncoder, VLM).
    `data`: a spec or a DataSource. `out=None` uses paths.features_dir()/<key of model, transform,
    data, dtype>; a complete matching cache there is returned without recomputing. A folder holding
    part of the same cache is resumed; one made differently raises CacheMismatch unless `overwrite`.
    `device` (spec models only): default cuda:LOCAL_RANK when CUDA is present, else cpu.
    """
    if dtype not in DTYPES:
        raise ZeroshiftError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if batch_size < 1 or (shard_rows is not None and shard_rows < 1):
        raise ZeroshiftError("batch_size and shard_rows must be positive")
    source = specs.dataset(data) if isinstance(data, str) else data
    if len(source) == 0:
        raise DataError(f"data source {source.spec!r} has no rows")
    model, dev = _resolve_model(model, runtime, device)
    identity = Identity(
        model_spec=model.spec, transform=describe_transform(model.image_transform),
        data_spec=source.spec, fingerprint=source.fingerprint(), rows=len(source), dtype=dtype,
    )
    out = Path(out) if out is not None else default_dir(identity)
    rank, world = dist.rank(), dist.world_size()
    model_dim = getattr(model, "dim", None)
    model_dim = model_dim if isinstance(model_dim, int) else None

    existing = None if overwrite else read_manifest(out)
    if shard_rows is None:
        shard_rows = existing["shard_rows"] if existing and existing.get("shard_rows") else DEFAULT_SHARD_ROWS
    if existing is not None:
        check_compatible(existing, identity, shard_rows, model_dim, out)
    n_shards = math.ceil(identity.rows / shard_rows)
    token = identity.token(shard_rows)

    # Set-up by rank 0 (others wait): clear or check what is there, leave an incomplete manifest.
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear(out)
        clean_temp(out)
        if not (existing and existing.get("complete") and _complete_and_sound(out, existing)):
            save_json(out / MANIFEST, _base_manifest(identity, shard_rows, model_dim))
    dist.barrier()
    manifest = read_manifest(out)
    if manifest and manifest.get("complete"):
        return Features(out, manifest, summary=_summary(out, 0, 0.0, 0, 0, n_shards, 0, manifest))

    # Each rank: keep its sound shards, compute the others.
    mine = [i for i in range(n_shards) if i % world == rank]
    sidecars: dict[int, dict] = {}
    for i in mine:
        sc = read_json(out / sidecar_name(i))
        if _sidecar_ok(out, i, sc, token, dtype):
            sidecars[i] = sc
        else:
            (out / sidecar_name(i)).unlink(missing_ok=True)
    todo = [i for i in mine if i not in sidecars]
    t0 = time.perf_counter()
    computed_rows, bad_now, used_workers = 0, 0, 0
    if todo:
        computed_rows, bad_now, used_workers = _compute(
            model, dev, source, out, todo, shard_rows, batch_size, workers, dtype, token, model_dim,
            progress and rank == 0, sidecars,
        )
    seconds = time.perf_counter() - t0

    if rank == 0:
        _wait_for_shards(out, n_shards, world, token, dtype, sidecars)
        manifest = _finalize(out, identity, shard_rows, source, sidecars)
    else:
        manifest = _wait_for_manifest(out, n_shards)
    reused = len(mine) - len(todo)
    summary = _summary(out, computed_rows, seconds, bad_now, len(todo), reused, used_workers, manifest)
    return Features(out, manifest, summary=summary)


def _complete_and_sound(out: Path, manifest: dict) -> bool:
    return all(verify_shard(out, e, manifest["dim"], manifest["dtype"]) is None for e in manifest["shards"])


def _summary(out: Path, rows: int, seconds: float, bad: int, computed: int, reused: int, workers: int,
             manifest: dict) -> dict:
    """Throughput of this process's part of the run, and the size of the whole cache."""
    return {
        "path": str(out), "rows": rows, "seconds": round(seconds, 3),
        "images_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0, "skipped": bad,
        "shards_computed": computed, "shards_reused": reused, "workers": workers,
        "cache_rows": manifest["rows"], "cache_skipped": manifest.get("n_bad", 0),
        "rank": dist.rank(), "world_size": dist.world_size(),
    }


def _compute(
    model: Any, dev: torch.device, source: DataSource, out: Path, todo: Sequence[int], shard_rows: int,
    batch_size: int, workers: int | None, dtype: str, token: str, dim: int | None, show: bool,
    sidecars: dict[int, dict],
) -> tuple[int, int, int]:
    """Embed shards `todo` and write each as soon as its last batch is in; returns (rows, bad, workers)."""
    n = len(source)
    spans = {i: (i * shard_rows, min((i + 1) * shard_rows, n)) for i in todo}
    batches, owner = [], []  # batches never cross a shard boundary
    for i in todo:
        start, end = spans[i]
        for s in range(start, end, batch_size):
            batches.append(list(range(s, min(s + batch_size, end))))
            owner.append(i)
    total = sum(e - s for s, e in spans.values())
    per_image, per_batch = split_batchable(model.image_transform)
    dataset = _Rows(source, per_image)
    def encode(images: torch.Tensor) -> torch.Tensor:  # [V, 3, H, W] from the loader -> [V, dim]
        return model.encode_image(images if per_batch is None else per_batch(images))

    if workers is None:
        workers = _default_workers(dataset, [r for b in batches for r in b], encode, dev)
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=workers,
        collate_fn=_collate, pin_memory=dev.type == "cuda",
    )
    pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (local rows [V], features [V, dim]) of the open shard
    bad: list[tuple[int, str]] = []
    filled, n_bad = 0, 0
    bar = tqdm(total=total, unit="img", unit_scale=True, desc="embed", disable=not show, dynamic_ncols=True)
    try:
        for (rows, images, bad_rows), i in zip(loader, owner):
            start, end = spans[i]
            if images is not None:
                feats = encode(images.to(dev, non_blocking=True))  # [V, dim]
                feats = feats.detach().float().cpu().numpy()
                dim = dim or feats.shape[1]
                pieces.append((rows.numpy() - start, feats))
            bad.extend(bad_rows)
            filled += len(rows) + len(bad_rows)
            n_bad += len(bad_rows)
            bar.update(len(rows) + len(bad_rows))
            if bad_rows:
                bar.set_postfix(skipped=n_bad)
            if filled == end - start:
                sidecars[i] = _write(out, i, start, end, pieces, bad, dim or _probe_dim(model, dev),
                                     dtype, token, source.keys)
                pieces, bad, filled = [], [], 0
    finally:
        bar.close()
    return total, n_bad, workers


def _probe_dim(model: Any, dev: torch.device) -> int:
    """Output width of a model without a `dim`, from one blank image (only when a shard had no good image)."""
    blank = model.image_transform(Image.new("RGB", (64, 64)))
    return int(model.encode_image(blank[None].to(dev)).shape[1])


def _write(
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
    save_json(out / sidecar_name(i), sidecar)
    return sidecar


def _wait_for_shards(out: Path, n_shards: int, world: int, token: str, dtype: str, have: dict[int, dict],
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
            if _sidecar_ok(out, i, sc, token, dtype):
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


def _wait_for_manifest(out: Path, n_shards: int, timeout: float | None = None) -> dict:
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


def _finalize(out: Path, identity: Identity, shard_rows: int, source: DataSource, sidecars: dict[int, dict]) -> dict:
    """Rank 0: labels, meta and the complete manifest, written last."""
    entries = [sidecars[i] for i in range(len(sidecars))]
    dims = {e["dim"] for e in entries}
    if len(dims) != 1:
        raise CacheMismatch(
            f"shards of {out} disagree on the feature width {sorted(dims)}: pass --overwrite or another --out"
        )
    labels = getattr(source, "labels", None)
    if labels is not None:
        save_npy(out / LABELS, np.asarray(labels, dtype=np.int64))
    captions = getattr(source, "captions", None)
    save_json(out / META, {
        "classes": None if source.classes is None else list(source.classes),
        "captions": None if captions is None else list(captions),
        "keys": list(source.keys),
    })
    manifest = _base_manifest(identity, shard_rows, dims.pop())
    manifest["shards"] = [
        {k: e[k] for k in ("name", "start", "rows", "sha256", "n_bad", "bad_rows")} for e in entries
    ]
    manifest["n_bad"] = sum(e["n_bad"] for e in entries)
    manifest["skipped"] = [b for e in entries for b in e["bad"]]
    manifest["labels"] = LABELS if labels is not None else None
    manifest["meta"] = META
    manifest["complete"] = True
    save_json(out / MANIFEST, manifest)
    return manifest


def find_cache(model: Any, data: str | DataSource, *, dtype: str = "float32", out: str | os.PathLike | None = None,
               runtime: str = "torch") -> Path | None:
    """The folder of a complete cache of `data` by `model` (at `out` or the default place), or None."""
    source = specs.dataset(data) if isinstance(data, str) else data
    model, _ = _resolve_model(model, runtime, "cpu" if isinstance(model, str) else None)
    identity = Identity(model.spec, describe_transform(model.image_transform), source.spec,
                        source.fingerprint(), len(source), dtype)
    folder = Path(out) if out is not None else default_dir(identity)
    manifest = read_manifest(folder)
    if not manifest or not manifest.get("complete"):
        return None
    try:
        check_compatible(manifest, identity, manifest["shard_rows"], None, folder)
    except ZeroshiftError:
        return None
    return folder
