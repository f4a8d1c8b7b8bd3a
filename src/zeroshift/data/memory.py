"""An in-memory data source: images held as uint8 arrays (tests, MNIST-style datasets, user code)."""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from PIL import Image

from .base import DataSource


class ArraySource(DataSource):
    """Rows from an array of images [N, H, W] (grey) or [N, H, W, 3] (RGB), uint8."""

    def __init__(
        self,
        images: np.ndarray,
        spec: str,
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
    ) -> None:
        self.images = np.asarray(images)
        self.spec = spec
        self.keys = [f"{spec}#{i}" for i in range(len(self.images))]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes = None if classes is None else list(classes)
        self.captions = None if captions is None else list(captions)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")

    def _content_token(self) -> str:
        h = hashlib.sha1(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            h.update(self.labels.tobytes())
        if self.captions is not None:
            h.update("\n".join(self.captions).encode())
        return h.hexdigest()
