"""`embed`: a model's image features for a data source, into a sharded, resumable cache.

Rows [i * shard_rows, (i + 1) * shard_rows) of the source form shard i. A DataLoader decodes and
transforms images in forked worker processes; the model encodes them in this one. A worker that sends
nothing for WORKER_TIMEOUT_S is taken as hung, and the unfinished shards are decoded in this process.
Each finished shard is written atomically with a sidecar holding its checksum and bad rows, so a rerun
after an interruption keeps every finished shard and computes only the rest. Under torchrun, rank r
computes the shards i with i % world == r; rank 0 checks every shard and writes the manifest.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import distributed as dist
from .. import specs
from ..data.base import BadImage, DataSource, load_row
from ..errors import DataError, ZeroshiftError
from ..io import clean_temp
from ..paths import output_folder, user_path
from ..models.runtime import runtime_used
from ..models.transforms import decode_side, one_thread, split_batchable
from .shards import base_manifest, finalize, sidecar_ok, wait_for_manifest, wait_for_shards, write_shard
from .layout import DTYPES, FORMAT, LABELS, MANIFEST, META, read_json, read_manifest, sidecar_name
from .store import (
    CacheError, Features, Identity, check_compatible, default_dir, describe_transform, save_json, verify_shard,
)

DEFAULT_SHARD_ROWS = 4096
# Seconds the loader waits for the next batch before it takes a decoding worker as hung: a worker forked
# while another thread of this process (an onnxruntime or intra-op pool, a tokenizer) held a lock can
# wait on it forever. Decoding a batch of big images takes seconds, so only a hang comes near this.
WORKER_TIMEOUT_S = 300.0


class WorkerHang(Exception):
    """A decoding worker sent no batch for WORKER_TIMEOUT_S."""


def describe_pixels(transform: Any) -> str:
    """How a row becomes the model's input: the transform, and the side images are decoded to first."""
    return f"{describe_transform(transform)}; decoded to a shorter side of at most {decode_side(transform)}"


class _Rows(Dataset):
    """Row i of a source as (i, transformed image or None, why it is bad or None)."""

    def __init__(self, source: DataSource, transform: Any, max_side: int | None = None) -> None:
        self.source, self.transform, self.max_side = source, transform, max_side

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            with one_thread():
                return i, self.transform(load_row(self.source, i, self.max_side)), None
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
        specs.require(model, ("image", "vlm"), "model", command="embed")  # before loading: a text encoder has no images
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
    role: str | None = None,
) -> Features:
    """Embed every image of `data` with `model` into the cache folder `out`; returns its Features.

    `model`: a spec or an object with `spec`, `image_transform` and `encode_image` (ImageEncoder, VLM).
    `data`: a spec or a DataSource. `out=None` uses paths.features_dir()/<key of model, transform,
    data, dtype>; a complete matching cache there is returned without recomputing. A folder holding
    part of the same cache is resumed; one made differently raises CacheMismatch unless `overwrite`.
    `device` (spec models only): default cuda:LOCAL_RANK when CUDA is present, else cpu. `role` names
    the model in the progress bar ("embed teacher SPEC on DATA").
    """
    if dtype not in DTYPES:
        raise ZeroshiftError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if batch_size < 1 or (shard_rows is not None and shard_rows < 1):
        raise ZeroshiftError("batch_size and shard_rows must be positive")
    if isinstance(model, str):
        specs.require(model, ("image", "vlm"), "model", command="embed")  # before the data is opened
    if out is not None:
        output_folder(out, "feature cache folder")  # an existing file there: one line, before any work
    source = specs.dataset(data) if isinstance(data, str) else data
    if len(source) == 0:
        raise DataError(f"data source {source.spec!r} has no rows")
    model, dev = _resolve_model(model, runtime, device)
    used = {"runtime": runtime_used(model)}  # 'auto' resolved, for the summary (and embed's config.json)
    identity = Identity(
        model_spec=model.spec, transform=describe_pixels(model.image_transform),
        data_spec=source.spec, fingerprint=source.fingerprint(), rows=len(source), dtype=dtype,
    )
    out = user_path(out) if out is not None else default_dir(identity)
    rank, world = dist.rank(), dist.world_size()
    model_dim = getattr(model, "dim", None)
    model_dim = model_dim if isinstance(model_dim, int) else None

    existing = None if overwrite else read_manifest(out)  # None too when damaged: rebuilt from the sidecars
    if shard_rows is None:
        kept = existing.get("shard_rows") if existing else None
        shard_rows = kept if isinstance(kept, int) and kept > 0 else DEFAULT_SHARD_ROWS
    if existing is not None:
        check_compatible(existing, identity, shard_rows, model_dim, out)
    outdated = existing is not None and existing.get("format") != FORMAT  # older: recomputed whole
    n_shards = math.ceil(identity.rows / shard_rows)
    token = identity.token(shard_rows)

    # Set-up by rank 0 (others wait): clear or check what is there, leave an incomplete manifest.
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite or outdated:
            _clear(out)
        clean_temp(out)
        if not (existing and not outdated and existing.get("complete") and _complete_and_sound(out, existing)):
            save_json(out / MANIFEST, base_manifest(identity, shard_rows, model_dim))
    dist.barrier()
    manifest = read_manifest(out)
    if manifest and manifest.get("complete"):
        return Features(out, manifest, summary={**_summary(out, 0, 0.0, 0, 0, n_shards, 0, manifest), **used})

    # Each rank: keep its sound shards, compute the others.
    mine = [i for i in range(n_shards) if i % world == rank]
    sidecars: dict[int, dict] = {}
    for i in mine:
        sc = read_json(out / sidecar_name(i))
        if sidecar_ok(out, i, sc, token, dtype):
            sidecars[i] = sc
        else:
            (out / sidecar_name(i)).unlink(missing_ok=True)
    todo = [i for i in mine if i not in sidecars]
    t0 = time.perf_counter()
    computed_rows, bad_now, used_workers = 0, 0, 0
    if todo:
        computed_rows, bad_now, used_workers = _compute(
            model, dev, source, out, todo, shard_rows, batch_size, workers, dtype, token, model_dim,
            progress and rank == 0, sidecars, bar_label(role, model.spec, source.spec),
        )
    seconds = time.perf_counter() - t0

    if rank == 0:
        wait_for_shards(out, n_shards, world, token, dtype, sidecars)
        manifest = finalize(out, identity, shard_rows, source, sidecars)
    else:
        manifest = wait_for_manifest(out, n_shards)
    reused = len(mine) - len(todo)
    summary = {**_summary(out, computed_rows, seconds, bad_now, len(todo), reused, used_workers, manifest), **used}
    return Features(out, manifest, summary=summary)


def _complete_and_sound(out: Path, manifest: dict) -> bool:
    """The manifest, labels, meta and every shard pass their checks (a damaged one is then recomputed)."""
    try:
        Features(out, manifest).close()
    except CacheError:
        return False
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
    sidecars: dict[int, dict], desc: str = "embed",
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
    dataset = _Rows(source, per_image, decode_side(model.image_transform))
    def encode(images: torch.Tensor) -> torch.Tensor:  # [V, 3, H, W] from the loader -> [V, dim]
        return model.encode_image(images if per_batch is None else per_batch(images))

    if workers is None:
        workers = _default_workers(dataset, [r for b in batches for r in b], encode, dev)
    bar = tqdm(total=total, unit="img", desc=desc, disable=not show, dynamic_ncols=True)  # whole images: 3/3
    shards = _Shards(spans, encode, dev, dim, bar, sidecars, lambda i, pieces, bad, dim: write_shard(
        out, i, *spans[i], pieces, bad, dim or _probe_dim(model, dev), dtype, token, source.keys))
    try:
        try:
            shards.fill(make_loader(dataset, batches, workers, dev), owner)
        except WorkerHang:  # the finished shards are kept; the open one and the rest are decoded here
            shards.drop_open()
            left = [k for k, i in enumerate(owner) if i not in sidecars]
            warnings.warn(f"embed: a decoding worker sent nothing for {WORKER_TIMEOUT_S:g} s (hung); decoding the "
                          f"{len({owner[k] for k in left})} unfinished shard(s) in this process", stacklevel=3)
            shards.fill(make_loader(dataset, [batches[k] for k in left], 0, dev), [owner[k] for k in left])
            workers = 0
    finally:
        bar.close()
    return total, shards.n_bad, workers


def make_loader(dataset: Dataset, batches: list[list[int]], workers: int, dev: torch.device) -> DataLoader:
    """The DataLoader of `batches` (lists of rows). Workers are forked, whatever Python's default start
    method: spawn and forkserver re-import the caller's main module (a script without a main guard
    fails), pickle the source for every worker, and took 10-16 s per embed on 2 cores against 0.2 s.
    The hazard of a fork, a worker stuck on a lock another thread held, is bounded by a timeout."""
    extra = {} if workers == 0 else {"multiprocessing_context": "fork", "timeout": WORKER_TIMEOUT_S}
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                      pin_memory=dev.type == "cuda", **extra)


class _Shards:
    """Encodes loader batches into the open shard and writes each shard as soon as its last batch is in."""

    def __init__(self, spans: dict[int, tuple[int, int]], encode: Any, dev: torch.device, dim: int | None,
                 bar: Any, sidecars: dict[int, dict], write: Any) -> None:
        self.spans, self.encode, self.dev, self.dim, self.bar = spans, encode, dev, dim, bar
        self.sidecars, self.write = sidecars, write
        self.pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (local rows [V], features [V, dim]) of the open shard
        self.bad: list[tuple[int, str]] = []
        self.filled, self.n_bad = 0, 0  # rows of the open shard; bad rows of the written ones

    def fill(self, loader: DataLoader, owner: Sequence[int]) -> None:
        """Batch k of `loader` belongs to shard owner[k]. WorkerHang when a worker sends nothing in time."""
        batches, hung = iter(loader), None
        try:
            for i in owner:
                try:
                    rows, images, bad_rows = next(batches)
                except RuntimeError as e:  # torch's words: "DataLoader timed out after ... seconds"
                    if "timed out" not in str(e):
                        raise
                    hung = str(e)
                    break  # out of the handler: nothing keeps the loader's iterator alive
                self._add(i, rows, images, bad_rows)
        finally:
            del batches  # shuts the workers down; a hung one is killed a few seconds later
        if hung is not None:
            raise WorkerHang(hung)

    def _add(self, i: int, rows: torch.Tensor, images: torch.Tensor | None, bad_rows: list) -> None:
        start, end = self.spans[i]
        if images is not None:
            feats = self.encode(images.to(self.dev, non_blocking=True))  # [V, dim]
            feats = feats.detach().float().cpu().numpy()
            self.dim = self.dim or feats.shape[1]
            self.pieces.append((rows.numpy() - start, feats))
        self.bad.extend(bad_rows)
        self.filled += len(rows) + len(bad_rows)
        self.bar.update(len(rows) + len(bad_rows))
        if bad_rows:
            self.bar.set_postfix(skipped=self.n_bad + len(self.bad))
        if self.filled == end - start:
            self.sidecars[i] = self.write(i, self.pieces, self.bad, self.dim)
            self.n_bad += len(self.bad)
            self.pieces, self.bad, self.filled = [], [], 0

    def drop_open(self) -> None:
        """Forget the open shard's batches (it is computed again)."""
        self.bar.update(-self.filled)
        self.pieces, self.bad, self.filled = [], [], 0


def short_spec(spec: str, width: int = 40) -> str:
    """`spec` cut to about `width` characters for a progress bar: a long path keeps its scheme and last
    part (folder:.../imgs), a run its folder's name (run:.../bridge)."""
    if len(spec) <= width:
        return spec
    scheme, colon, rest = spec.partition(":")
    rest = rest.split("@", 1)[0] if scheme == "run" else rest  # the weights digest says nothing here
    if colon and "/" in rest:
        shown = f"{scheme}:.../{rest.rstrip('/').rsplit('/', 1)[-1]}"
        if len(shown) <= width:
            return shown
    return spec[: width - 3] + "..."


def bar_label(role: str | None, model: str, data: str) -> str:
    """The embed bar's description: "embed teacher conse:effnet-lite2+minilm on tuxpaint[0::2]"."""
    return " ".join(["embed", *([role] if role else []), short_spec(model), "on", short_spec(data)])


def _probe_dim(model: Any, dev: torch.device) -> int:
    """Output width of a model without a `dim`, from one blank image (only when a shard had no good image)."""
    blank = model.image_transform(Image.new("RGB", (64, 64)))
    return int(model.encode_image(blank[None].to(dev)).shape[1])


def find_cache(model: Any, data: str | DataSource, *, dtype: str = "float32", out: str | os.PathLike | None = None,
               runtime: str = "torch") -> Path | None:
    """The folder of a complete cache of `data` by `model` (at `out` or the default place), or None."""
    source = specs.dataset(data) if isinstance(data, str) else data
    model, _ = _resolve_model(model, runtime, "cpu" if isinstance(model, str) else None)
    identity = Identity(model.spec, describe_pixels(model.image_transform), source.spec,
                        source.fingerprint(), len(source), dtype)
    folder = user_path(out) if out is not None else default_dir(identity)
    manifest = read_manifest(folder)
    if not manifest or not manifest.get("complete") or manifest.get("format") != FORMAT:
        return None
    try:
        check_compatible(manifest, identity, manifest.get("shard_rows"), None, folder)
    except ZeroshiftError:
        return None
    return folder
