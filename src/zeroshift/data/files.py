"""Rows backed by image files on disk: FileSource, the recursive image walk, and file identity tokens."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import DataSource
from .images import DEFAULT_MAX_PIXELS, BadImage, decode_image, is_image_file


def stat_token(files: Sequence[Path]) -> str:
    """Identity of files on disk: size and mtime of each (a changed file changes the token)."""
    h = hashlib.sha1()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"-;")
    return h.hexdigest()


def files_token(root: Path, relpaths: Sequence[str]) -> str:
    """Identity of a set of files under `root`: relative names, sizes and mtimes (a renamed file counts)."""
    h = hashlib.sha1()
    for rel in relpaths:
        try:
            st = os.stat(root / rel)
            h.update(f"{rel}\0{st.st_size}:{st.st_mtime_ns};".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{rel}\0-;".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def walk_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path; hidden entries skipped.

    Symbolic links are followed (a linked file is a row of its own), link loops are not.
    """
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # deterministic walk
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class FileSource(DataSource):
    """Rows backed by image files on disk (one path per row), decoded within `max_side` / `max_pixels`."""

    def __init__(
        self,
        spec: str,
        files: Sequence[Path],
        keys: Sequence[str],
        labels: Sequence[int] | np.ndarray | None = None,
        classes: Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
        max_side: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        bad: dict[int, str] | None = None,
    ) -> None:
        self.spec = spec
        self.bad = dict(bad or {})  # row -> why it cannot be used (known before any decoding)
        self.files = [Path(f) for f in files]
        self.keys = list(keys)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes = None if classes is None else list(classes)
        self.captions = None if captions is None else list(captions)
        self.max_side = max_side
        self.max_pixels = max_pixels
        if len(self.keys) != len(self.files):
            raise DataError(f"{spec}: {len(self.keys)} keys for {len(self.files)} files")

    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        if i in self.bad:
            raise BadImage(self.bad[i])
        return decode_image(self.files[i], max_side or self.max_side, self.max_pixels)

    def _content_token(self) -> str:
        return stat_token(self.files)
