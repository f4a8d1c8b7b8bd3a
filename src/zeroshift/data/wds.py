"""wds:PATTERN, local WebDataset tar shards, indexed once so any row is read by a seek."""
from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, SpecError
from .base import BadImage, DataSource
from .files import stat_token
from .images import DEFAULT_MAX_PIXELS, decode_image
from .labels import index_labels
from ..paths import user_path

_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset keys: 'dir/abc.seg.jpg' -> ('dir/abc', 'seg.jpg') (split at the first dot of the base name)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


class WdsSource(DataSource):
    """Samples of WebDataset tar shards, indexed once (headers + small cls/txt members)."""

    def __init__(self, spec: str, shards: list[Path], index: list[tuple[int, str, int, int]],
                 labels: list[int] | None, classes: list[str] | None, captions: list[str] | None,
                 max_side: int | None, max_pixels: int) -> None:
        self.spec = spec
        self.shards = shards
        self._index = index  # (shard, member name, data offset, size) per row
        self.keys = [f"{shards[s].name}/{_split_member(m)[0]}" for s, m, _, _ in index]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes, self.captions = classes, captions
        self.max_side, self.max_pixels = max_side, max_pixels

    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        s, member, offset, size = self._index[i]
        shard = self.shards[s]
        try:
            if offset >= 0:  # uncompressed tar: seek straight to the member's bytes
                with open(shard, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(size)
            else:
                with tarfile.open(shard) as tf:
                    fh = tf.extractfile(member)
                    data = fh.read() if fh is not None else b""
        except (OSError, tarfile.TarError, KeyError) as e:
            raise BadImage(f"{shard}:{member}: cannot read ({e})") from e
        if len(data) != size:
            raise BadImage(f"{shard}:{member}: truncated ({len(data)} of {size} bytes)")
        try:
            return decode_image(data, max_side or self.max_side, self.max_pixels)
        except BadImage as e:
            raise BadImage(f"{shard}:{member}: {str(e).split(': ', 1)[-1]}") from None

    def _content_token(self) -> str:
        return stat_token(self.shards)


def _expand_shards(pattern: str) -> list[Path]:
    from braceexpand import braceexpand

    if re.match(r"^[a-z][a-z0-9+.-]+:", pattern):
        raise SpecError(f"wds:{pattern}: only local tar shards are read; download remote shards first")
    return [user_path(p) for p in braceexpand(pattern)]


def _find_classnames(shards: list[Path]) -> list[str] | None:
    """CLIP_benchmark keeps `classnames.txt` beside the shards or one folder up."""
    for folder in (shards[0].parent, shards[0].parent.parent):
        f = folder / "classnames.txt"
        if f.is_file():
            return [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return None


def _index_shard(shard: Path, small: int = 1 << 16) -> tuple[dict, list[str], bool]:
    """One pass over a tar: key -> ext -> (name, data offset, size, text of a small cls/txt member)."""
    try:
        tf, compressed = tarfile.open(shard, "r:"), False
    except tarfile.ReadError:
        tf, compressed = tarfile.open(shard, "r:*"), True  # gz/bz2/xz: members are read by name
    samples: dict[str, dict[str, tuple[str, int, int, str | None]]] = {}
    order: list[str] = []
    with tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = _split_member(m.name)
            if key not in samples:
                samples[key] = {}
                order.append(key)
            text = None
            if ext in ("cls", "txt") and m.size <= small:
                fh = tf.extractfile(m)
                text = fh.read().decode("utf-8", "surrogateescape").strip() if fh is not None else None
            samples[key].setdefault(ext, (m.name, m.offset_data, m.size, text))
    return samples, order, compressed


def wds(arg: str, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> WdsSource:
    """wds:PATTERN, e.g. wds:data/shard-{000..009}.tar. Image from jpg/png/jpeg/webp, label from
    cls (integers, or names that become sorted classes; names from classnames.txt when present),
    caption from txt. Samples keep the shards' order."""
    if not arg:
        raise SpecError("'wds:' needs a shard pattern, e.g. wds:shards-{000..009}.tar")
    spec = f"wds:{arg}"
    shards = _expand_shards(arg)
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise DataError(f"{spec}: {len(missing)} of {len(shards)} shards missing, first: {missing[0]}")
    index: list[tuple[int, str, int, int]] = []
    cls_text: list[str | None] = []
    txt: list[str | None] = []
    for s, shard in enumerate(shards):
        try:
            samples, order, compressed = _index_shard(shard)
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"{spec}: {shard} is not a readable tar file ({e})") from e
        for key in order:
            members = samples[key]
            image = next((members[e] for e in _WDS_IMAGE_EXTS if e in members), None)
            if image is None:
                continue
            index.append((s, image[0], -1 if compressed else image[1], image[2]))
            cls_text.append(members["cls"][3] if "cls" in members else None)
            txt.append(members["txt"][3] if "txt" in members else None)
    if not index:
        raise DataError(f"{spec}: no samples with an image ({'/'.join(_WDS_IMAGE_EXTS)}) in {len(shards)} shards")

    labels = classes = captions = None
    if any(c is not None for c in cls_text):
        values = [c or "" for c in cls_text]
        if all(re.fullmatch(r"-?\d+", v) for v in values if v):
            labels = [int(v) if v else -1 for v in values]
            classes = _find_classnames(shards)
            if classes is None and max(labels) >= 0:
                classes = [str(c) for c in range(max(labels) + 1)]
        else:
            labels, classes = index_labels(values)
    if any(t is not None for t in txt):
        captions = [t or "" for t in txt]
    return WdsSource(spec, shards, index, labels, classes, captions, max_side, max_pixels)
