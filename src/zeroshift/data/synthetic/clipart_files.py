"""The clip-art set a renderer draws from: where it is, which files show a class (by the words of their
paths), and decoded clip arts in a per-process cache."""
from __future__ import annotations

import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from ..catalogue import OPENCLIPART_DIR, clipart_words
from ..fetch import dataset_dir, is_fetched
from ..files import walk_images
from ..images import to_rgb
from ...paths import user_path

CLIPART_MAX_PIXELS = 16_000_000  # clip art above this is skipped, not decoded (PNGs have no reduced decode)
CACHE_BYTES = 128 << 20  # decoded clip art kept per process
_STOP = frozenset({"a", "an", "the", "of", "and", "or", "with", "in", "on", "for", "to", "at", "by"})


def clipart_set(value: str) -> tuple[Path, list[str], str]:
    """clipart=DIR|openclipart -> (root, relative image paths, canonical value)."""
    if value == "openclipart":
        if not is_fetched("openclipart"):
            raise DataError("synthetic: the clipart renderer needs clip art: run `zeroshift data fetch openclipart` "
                            "or pass clipart=DIR")
        root, canonical = dataset_dir("openclipart") / OPENCLIPART_DIR, value
    else:
        root = user_path(value)
        if not root.is_dir():
            raise DataError(f"synthetic: clipart={value} is not a folder; give a folder of <category>/<name>.png")
        root = root.resolve()
        canonical = str(root)
    files = walk_images(root)
    if not files:
        raise DataError(f"synthetic: no clip-art images under {root}")
    return root, [f.relative_to(root).as_posix() for f in files], canonical


# ----------------------------------------------------------------------- class names <-> path words

def _forms(word: str) -> set[str]:
    """A word and its singular guesses ('bags' -> bag, 'boxes' -> box): plural-tolerant matching."""
    out = {word}
    if len(word) > 3 and word.endswith("es"):
        out.add(word[:-2])
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])
    return out


def path_words(relpath: str) -> set[str]:
    """Lower-case words of a clip-art path's folders and file name (OpenClipart counters and cut-off words dropped)."""
    parts = relpath.split("/")
    words = set(clipart_words(Path(parts[-1]).stem).split())
    for folder in parts[:-1]:
        words.update(clipart_words(folder + "_0").split())
    return words


def class_words(name: str) -> list[list[str]]:
    """Content words of a class name, per '/'-separated alternative ('t-shirt/top' -> [['shirt'], ['top']])."""
    out = []
    for alt in name.lower().split("/"):
        words = [w for w in re.split(r"[^a-z]+", alt) if len(w) > 1 and w not in _STOP]
        if words:
            out.append(words)
    return out


def match_classes(classes: Sequence[str], relpaths: Sequence[str]) -> list[np.ndarray | None]:
    """Per class, indices of clip arts whose path words hold all of the class's words (any alternative,
    first that matches), else its head (last) word; None where nothing matches."""
    index: dict[str, set[int]] = {}
    for k, rel in enumerate(relpaths):
        for w in path_words(rel):
            for f in _forms(w):
                index.setdefault(f, set()).add(k)

    def files(word: str) -> set[int]:
        return set().union(*(index.get(f, set()) for f in _forms(word)))

    out: list[np.ndarray | None] = []
    for name in classes:
        alts, found = class_words(name), set()
        for words in alts:
            found = set.intersection(*(files(w) for w in words))
            if found:
                break
        if not found:
            for words in alts:
                found = files(words[-1])
                if found:
                    break
        out.append(np.array(sorted(found), dtype=np.int64) if found else None)
    return out


# -------------------------------------------------------------------- decoded clip art, per process

_CACHE: OrderedDict[tuple[str, int], Image.Image | None] = OrderedDict()
_CACHE_USED = [0]
_CACHE_LOCK = threading.Lock()


def _decode_clipart(path: Path, max_side: int, max_pixels: int) -> Image.Image | None:
    """An RGBA clip art cropped to its opaque part, longest side <= max_side; None when unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.width * im.height > max_pixels or im.width < 1 or im.height < 1:
                    return None
                im.load()
                if im.mode not in ("RGBA", "RGB", "LA", "L", "P", "PA", "1"):
                    im = to_rgb(im)
                im = im.convert("RGBA")
        bbox = im.getchannel("A").getbbox()
        if bbox is None:
            return None  # fully transparent
        im = im.crop(bbox)
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return im
    except Exception:  # noqa: BLE001 - corrupt or truncated files: skipped by the caller, never fatal
        return None


def load_clipart(path: Path, max_side: int, max_pixels: int = CLIPART_MAX_PIXELS) -> Image.Image | None:
    """`_decode_clipart` through a per-process LRU cache bounded by CACHE_BYTES."""
    key = (str(path), max_side)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    im = _decode_clipart(path, max_side, max_pixels)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = im
            _CACHE_USED[0] += _bytes(im)
        while _CACHE_USED[0] > CACHE_BYTES and len(_CACHE) > 1:
            _CACHE_USED[0] -= _bytes(_CACHE.popitem(last=False)[1])
    return im


def _bytes(im: Image.Image | None) -> int:
    return 64 + (im.width * im.height * 4 if im is not None else 0)
