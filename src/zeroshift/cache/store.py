"""The on-disk feature cache: manifest, shards, checksums, and `Features`, the reader.

A cache folder holds `shard-00000.npy` ([rows, dim], float16 or float32), one per `shard_rows`
source rows in source order, each with `shard-00000.json` (its checksum and its bad rows), plus
`labels.npy`, `meta.json` (classes, captions, keys) and `manifest.json`. Every file is written to a
temporary name, fsync'd and renamed, so a reader never sees half a file, and the manifest says
`complete: true` only once every shard is present and checked. The manifest holds the sha256 of every
file a reader uses (shards under `shards`, labels and meta under `files`); `Features` checks the
manifest's shape and the labels and meta on every open, `load_features` the shards too.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import distributed as dist
from .. import paths
from ..errors import CacheError, CacheMismatch
from ..io import write_bytes
from .layout import FORMAT, LABELS, MANIFEST, META, is_count, load_json, manifest_problem, rebuild_hint, short_repr
from .layout import shard_name  # noqa: F401  (store.shard_name, as before the split)


def _max_open() -> int:
    """Shard files a reader keeps open at once: a quarter of the process's descriptor limit, at least 64."""
    try:
        import resource

        return max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
    except (ImportError, ValueError, OSError):  # pragma: no cover - platforms without rlimits
        return 64


MAX_OPEN = _max_open()


def describe_transform(transform: Any) -> str:
    """A stable text description of an image transform: its repr without memory addresses."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


@dataclass(frozen=True)
class Identity:
    """What a cache was computed from; two runs may share a cache only when these agree."""

    model_spec: str
    transform: str
    data_spec: str
    fingerprint: str
    rows: int
    dtype: str

    def key(self) -> str:
        """Hash of (model, transform, data fingerprint, dtype): the default folder name's core."""
        blob = json.dumps([self.model_spec, self.transform, self.fingerprint, self.dtype])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def token(self, shard_rows: int) -> str:
        """Hash of the identity and the shard layout, stamped on each shard's sidecar."""
        return hashlib.sha256(f"{self.key()}/{shard_rows}".encode()).hexdigest()[:16]


def default_dir(identity: Identity) -> Path:
    """paths.features_dir()/<model>--<data>--<key>, readable names trimmed, the key unique."""

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:40] or "x"

    name = f"{slug(identity.model_spec)}--{slug(identity.data_spec)}--{identity.key()}"
    return paths.features_dir() / name


# ---------------------------------------------------------------- files
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_json(path: Path, obj: Any) -> str:
    """Write a cache's JSON file (manifest, sidecar, meta) atomically and durably: a resume relies on it.
    Returns the sha256 of the file's bytes."""
    data = (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode("utf-8")
    write_bytes(path, data, durable=True)
    return hashlib.sha256(data).hexdigest()


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write `array` as .npy atomically; returns the sha256 of the file's bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    data = buf.getvalue()
    write_bytes(path, data, durable=True)
    return hashlib.sha256(data).hexdigest()


def check_compatible(manifest: dict, identity: Identity, shard_rows: int, dim: int | None, folder: Path) -> None:
    """Raise CacheMismatch naming what differs between `manifest` and this run, or when a newer zeroshift
    wrote it. An older format passes: the caller rebuilds such a cache."""
    ours = {
        "model": identity.model_spec, "image transform": identity.transform,
        "data fingerprint": identity.fingerprint, "rows": identity.rows, "dtype": identity.dtype,
        "shard_rows": shard_rows,
    }
    theirs = {
        "model": manifest.get("model_spec"), "image transform": manifest.get("transform"),
        "data fingerprint": manifest.get("fingerprint"), "rows": manifest.get("rows"),
        "dtype": manifest.get("dtype"), "shard_rows": manifest.get("shard_rows"),
    }
    if dim is not None and manifest.get("dim") is not None:
        ours["dim"], theirs["dim"] = dim, manifest["dim"]
    diffs = [f"{k} {short_repr(theirs[k])} vs {short_repr(ours[k])}" for k in ours if ours[k] != theirs[k]]
    if diffs:
        raise CacheMismatch(
            f"feature cache {folder} was made differently ({'; '.join(diffs)}, cache vs this run): "
            "pass --overwrite (overwrite=True) or another --out"
        )
    theirs_format = manifest.get("format")
    if is_count(theirs_format) and theirs_format > FORMAT:
        raise CacheMismatch(f"feature cache {folder} has format {theirs_format}, newer than this zeroshift's {FORMAT}: "
                            "upgrade zeroshift, or pass --overwrite (overwrite=True) or another --out")


# ---------------------------------------------------------------- reading
class Features:
    """A complete feature cache. Rows of bad images are left out: `len`, `labels`, `captions`,
    `index` and every array describe valid rows only, in source order. Opening one checks the manifest
    and the checksums of labels.npy and meta.json (a one-line CacheError naming the file)."""

    def __init__(self, path: str | os.PathLike, manifest: dict, summary: dict | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.summary = summary
        problem = manifest_problem(manifest)
        if problem:
            raise CacheError(f"{MANIFEST} in {self.path} is damaged ({problem}): {rebuild_hint(self.path, manifest)}")
        self.dim: int = int(manifest["dim"])
        self.spec: str = manifest["model_spec"]
        self.dtype: str = manifest["dtype"]
        shards = manifest["shards"]
        self._names = [s["name"] for s in shards]
        self._local: list[np.ndarray] = []  # per shard: local indices of valid rows
        for s in shards:
            valid = np.ones(s["rows"], dtype=bool)
            valid[np.asarray(s["bad_rows"], dtype=np.int64)] = False
            self._local.append(np.flatnonzero(valid))
        counts = np.array([len(v) for v in self._local], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])  # [n_shards + 1]
        self.index = np.concatenate(  # [N] source row of each valid row
            [s["start"] + v for s, v in zip(shards, self._local)] or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        meta = self._meta()
        self.classes: list[str] | None = meta["classes"]
        captions, keys = meta["captions"], meta["keys"]
        self.captions: list[str] | None = None if captions is None else [captions[i] for i in self.index]
        self.keys: list[str] | None = None if keys is None else [keys[i] for i in self.index]
        self.labels: np.ndarray | None = None
        if manifest["labels"]:
            self.labels = self._labels()[self.index]
        self._maps: dict[int, np.ndarray] = {}
        self._open: dict[int, tuple[int, int]] = {}  # shard -> (file descriptor, byte offset of row 0)
        self._checked: dict[int, int] = {}  # shard -> byte offset of row 0, once its header passed the checks
        self._row_bytes = self.dim * np.dtype(self.dtype).itemsize
        self._starts = np.array([s["start"] for s in shards], dtype=np.int64)  # [n_shards] first source row

    def _file_bytes(self, name: str) -> bytes:
        """The bytes of the cache's file `name`, refused unless they match the manifest's sha256."""
        path = self.path / name
        try:
            data = path.read_bytes()
        except OSError as e:
            missing = isinstance(e, FileNotFoundError)
            raise self._damaged(name, "is missing" if missing else f"is unreadable ({type(e).__name__}: {e.strerror})"
                                ) from None
        if hashlib.sha256(data).hexdigest() != self.manifest["files"][name]:
            raise self._damaged(name, "fails its sha256 checksum (changed or damaged since it was written)")
        return data

    def _damaged(self, name: str, why: str) -> CacheError:
        return CacheError(f"{name} in {self.path} {why}: {rebuild_hint(self.path, self.manifest)}")

    def _meta(self) -> dict:
        """meta.json, checked: classes, and captions and keys for every source row (each may be null)."""
        try:
            meta = json.loads(self._file_bytes(META))
        except ValueError:
            meta = None
        rows = self.manifest["rows"]
        if not isinstance(meta, dict):
            raise self._damaged(META, "is not a JSON object")
        for key, n in (("classes", None), ("captions", rows), ("keys", rows)):
            value = meta.get(key)
            if value is not None and not isinstance(value, list):
                raise self._damaged(META, f"holds {key} that are not a list")
            if value is not None and n is not None and len(value) != n:
                raise self._damaged(META, f"holds {len(value)} {key} for {n} rows")
        return {key: meta.get(key) for key in ("classes", "captions", "keys")}

    def _labels(self) -> np.ndarray:
        """labels.npy, checked: one whole number per source row. [rows] int64"""
        try:
            labels = np.load(io.BytesIO(self._file_bytes(LABELS)), allow_pickle=False)
        except (ValueError, EOFError, OSError):
            labels = None
        rows = self.manifest["rows"]
        if labels is None or labels.shape != (rows,) or labels.dtype.kind not in "iu":
            raise self._damaged(LABELS, f"does not hold {rows} whole-number labels")
        return labels.astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"Features({self.path}, rows={len(self)}, dim={self.dim}, dtype={self.dtype}, model={self.spec!r})"

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the shard files this reader holds open (it reopens them when read again)."""
        for fd, _ in getattr(self, "_open", {}).values():
            os.close(fd)
        getattr(self, "_open", {}).clear()

    def shard(self, k: int) -> np.ndarray:
        """Shard k memory-mapped, all rows (bad ones are zeros). [rows, dim]"""
        if k not in self._maps:
            self._fd(k)  # the same checks and errors as a read
            self._maps[k] = np.load(self.path / self._names[k], mmap_mode="r")
        return self._maps[k]

    def _fd(self, k: int) -> tuple[int, int]:
        """Shard k's open file and the byte offset of its first row, checked against the manifest."""
        if k in self._open:
            return self._open[k]
        path = self.path / self._names[k]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise CacheError(f"rank {dist.rank()} cannot read {path} ({type(e).__name__}: {e.strerror}): every process "
                             "needs the whole cache; put it on storage all machines share") from None
        if len(self._open) >= MAX_OPEN:  # bound the descriptors held: close the longest-open one
            os.close(self._open.pop(next(iter(self._open)))[0])
        if k not in self._checked:
            self._checked[k] = self._header(k, fd, path)
        self._open[k] = (fd, self._checked[k])
        return self._open[k]

    def _header(self, k: int, fd: int, path: Path) -> int:
        """The byte offset of shard k's first row, after checking its header against the manifest."""
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(f)
                offset = f.tell()
        except OSError as e:
            os.close(fd)
            raise CacheError(f"rank {dist.rank()} cannot read {path} ({type(e).__name__}: {e.strerror or e}): "
                             "every process needs the whole cache; put it on storage all machines share") from None
        except (ValueError, EOFError):  # an empty or overwritten file
            os.close(fd)
            hint = rebuild_hint(self.path, self.manifest)
            raise CacheError(f"{path} is not a .npy file (empty or damaged): {hint}") from None
        expected = (self.manifest["shards"][k]["rows"], self.dim)
        if fortran or shape != expected or dtype != np.dtype(self.dtype):
            os.close(fd)
            raise CacheError(f"{path} holds {shape} {dtype}, not the manifest's {expected} {self.dtype}: "
                             f"{rebuild_hint(self.path, self.manifest)}")
        return offset

    def _read(self, shard: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Rows `local[i]` of shards `shard[i]` as [n, dim] in the cache's dtype, read with pread, one call
        per run of consecutive rows, into this array alone: resident memory never holds more of the cache."""
        if len(local) == 0:
            return np.empty((0, self.dim), dtype=self.dtype)
        order = np.lexsort((local, shard))  # [n] by shard, then row
        key = shard[order] * (int(local.max(initial=0)) + 2) + local[order]  # consecutive rows: key + 1
        cuts = np.flatnonzero(np.diff(key) != 1) + 1
        starts, ends = np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [len(key)]]).tolist()
        ranked = np.empty((len(local), self.dim), dtype=self.dtype)  # rows in `order`
        view = memoryview(ranked.reshape(-1).view(np.uint8))
        rb = self._row_bytes
        for a, b, k, row in zip(starts, ends, shard[order][starts].tolist(), local[order][starts].tolist()):
            fd, offset = self._fd(k)
            if os.preadv(fd, [view[a * rb:b * rb]], offset + row * rb) != (b - a) * rb:
                raise CacheError(f"{self.path / self._names[k]} ends early (truncated): "
                                 f"{rebuild_hint(self.path, self.manifest)}")
        out = np.empty_like(ranked)
        out[order] = ranked
        return out

    def numpy(self) -> np.ndarray:
        """All valid rows as one float32 array [N, dim] (in memory)."""
        out = np.empty((len(self), self.dim), dtype=np.float32)
        for k, local in enumerate(self._local):
            out[self._offsets[k]:self._offsets[k + 1]] = self._read(np.full(len(local), k), local)
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """`np.asarray(features)` gives the rows [N, dim], as `numpy()` does (always a new array)."""
        if copy is False:
            raise ValueError("a feature cache's rows are read from disk: they cannot be viewed without a copy")
        rows = self.numpy()
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def torch(self) -> torch.Tensor:
        """All valid rows as a float32 tensor [N, dim]."""
        return torch.from_numpy(self.numpy())

    def gather(self, rows: np.ndarray, dtype: str | None = "float32") -> np.ndarray:
        """Valid rows at positions `rows` (0..len-1) as [len(rows), dim] in `dtype` (None: the cache's own).
        Rows are read from the files on demand (the OS's page cache keeps the hot ones), so a cache larger
        than RAM is read in memory bounded by the batch."""
        rows = np.asarray(rows, dtype=np.int64)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1  # [B]
        local = self.index[rows] - self._starts[shard]  # [B] row within its shard
        out = self._read(shard, local)
        return out if dtype is None else out.astype(dtype, copy=False)

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Yield (features [B, dim] float32, positions of those rows among the valid rows).

        Rows are read from the shard files batch by batch, so a cache larger than RAM is read in
        bounded memory. Positions index `labels`, `captions` and `index`.
        """
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for b in range(0, n, batch_size):
            rows = order[b:b + batch_size]
            yield torch.from_numpy(self.gather(rows)), rows


def verify_shard(folder: Path, entry: dict, dim: int, dtype: str) -> str | None:
    """Why shard `entry` is unusable, or None when its file exists, has its shape and checksum."""
    path = folder / entry["name"]
    if not path.exists():
        return "is missing"
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # EOFError: an empty file
        return "is unreadable (empty or not a .npy file)"
    if arr.shape != (entry["rows"], dim) or arr.dtype != np.dtype(dtype):
        return f"has shape {arr.shape} {arr.dtype}, expected ({entry['rows']}, {dim}) {dtype}"
    if sha256_file(path) != entry["sha256"]:
        return "fails its sha256 checksum (corrupted)"
    return None


def load_features(path: str | os.PathLike, verify: bool = True) -> Features:
    """Open a complete feature cache written by `embed`; checks every shard's checksum unless `verify=False`
    (the manifest's shape and the labels' and meta's checksums are checked always)."""
    folder = Path(path)
    manifest, why = load_json(folder / MANIFEST)
    if manifest is None and why == "is missing":
        raise CacheError(f"no feature cache at {folder} (manifest.json missing): run `zeroshift embed` first")
    if manifest is None:
        raise CacheError(f"{MANIFEST} in {folder} {why}: {rebuild_hint(folder, None)}")
    if manifest.get("format") != FORMAT:
        newer = is_count(manifest.get("format")) and manifest["format"] > FORMAT
        raise CacheError(
            f"feature cache {folder} has format {manifest.get('format')!r} (from {'a newer' if newer else 'an older'} "
            f"zeroshift), this zeroshift reads {FORMAT}: {rebuild_hint(folder, manifest)}"
        )
    if not manifest.get("complete"):
        raise CacheError(f"feature cache {folder} is incomplete, interrupted: rerun the same embed to resume")
    features = Features(folder, manifest)  # checks the manifest, labels and meta
    if verify:
        for entry in manifest["shards"]:
            problem = verify_shard(folder, entry, manifest["dim"], manifest["dtype"])
            if problem:
                raise CacheError(f"{entry['name']} in {folder} {problem}: {rebuild_hint(folder, manifest)}")
    return features
