"""The DataSource interface: images with their class names, labels or captions, in a fixed order.

Metadata (labels, captions, keys) is available without decoding a single image, so caches, evaluation
and training can read it cheaply; images are decoded one at a time by `load_image`.
"""
from __future__ import annotations

import abc
import hashlib
import inspect
import json
from typing import Sequence

import numpy as np
from PIL import Image


class DataSource(abc.ABC):
    """A finite, ordered set of images. Row i has key `keys[i]`, and optionally `labels[i]`
    (an index into `classes`, -1 when unknown) and `captions[i]`."""

    spec: str
    classes: list[str] | None = None
    labels: np.ndarray | None = None  # [N] int64
    captions: list[str] | None = None
    keys: Sequence[str]

    def __len__(self) -> int:
        return len(self.keys)

    @abc.abstractmethod
    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        """Row i as an RGB PIL image; raises BadImage when it cannot be decoded. `max_side` is the shorter
        side the caller needs: a source may decode larger images reduced to it (a JPEG at a smaller DCT
        scale), which bounds memory; None keeps the source's own bound."""

    def fingerprint(self) -> str:
        """A hash that changes whenever the rows, their order, their labels or captions, or their content
        identity changes (so a relabelled or recaptioned source never reuses an old cache)."""
        h = hashlib.sha1()
        h.update(json.dumps([self.spec, self.classes], sort_keys=True).encode())
        for k in self.keys:
            h.update(k.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        for c in self.captions or ():
            h.update(b"\1" + (c or "").encode("utf-8", "surrogateescape"))
        h.update(self._content_token().encode())
        return h.hexdigest()[:16]

    def _content_token(self) -> str:
        """Extra identity (file sizes and mtimes, a checksum); sources override where cheap."""
        return ""


class BadImage(Exception):
    """An image that could not be decoded; sources raise it, loaders skip, count and list it."""


class TooManyPixels(BadImage):
    """An image refused for its (declared) size before its pixels are decoded: a decompression bomb."""


class Subset(DataSource):
    """Rows `indices` of another source, in that order, with their labels and captions."""

    def __init__(self, source: DataSource, indices, spec: str | None = None) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.spec = spec or f"{source.spec}[{len(self.indices)} rows]"
        self.classes = source.classes
        self.keys = [source.keys[i] for i in self.indices]
        self.labels = None if source.labels is None else np.asarray(source.labels)[self.indices]
        self.captions = None if source.captions is None else [source.captions[i] for i in self.indices]

    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        return load_row(self.source, int(self.indices[i]), max_side)

    def _content_token(self) -> str:
        return self.source.fingerprint()  # the selection itself is in `keys`


def load_row(source: DataSource, i: int, max_side: int | None) -> Image.Image:
    """`source.load_image(i, max_side)`, also for sources written before `max_side` existed."""
    if max_side is None or "max_side" not in inspect.signature(source.load_image).parameters:
        return source.load_image(i)
    return source.load_image(i, max_side=max_side)
