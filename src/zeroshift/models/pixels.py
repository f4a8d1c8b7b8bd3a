"""Decoded, resized images as a feature cache: the input side of training an image tower.

A model that trains on images (a distill student, a finetuned tower) reads the same images every
epoch. `PixelEncoder` turns the image-level part of its transform (resize, crop, to uint8) into an
"encoder" whose features are the flattened pixels, so `embed` decodes every image once, in worker
processes, into a resumable sharded cache with the same rows and bad-image handling as the teacher's
features. The batch-level part (scale, normalise) runs on each training batch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ZeroshiftError
from .transforms import probe_images, split_batchable
from .vlm import ImageEncoder, ImageTransform


class PixelEncoder(ImageEncoder):
    """images [N, 3, S, S] (as the transform leaves them) -> their flattened values [N, 3 * S * S]."""

    def __init__(self, transform: ImageTransform) -> None:
        super().__init__()
        self.image_transform = transform
        probe = transform(probe_images(1)[0])  # [3, S, S]
        if probe.ndim != 3 or probe.shape[0] != 3:
            raise ZeroshiftError(f"the image transform gives shape {tuple(probe.shape)}, not a [3, H, W] image")
        self.shape = tuple(probe.shape)
        self.spec = f"pixels:{self.shape[1]}x{self.shape[2]}"
        self.dtype = "uint8" if probe.dtype == torch.uint8 else "float16"
        self.dim = int(probe.numel())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float()  # [N, 3 * S * S]


def pixel_pipeline(transform: ImageTransform) -> tuple[PixelEncoder, Callable[[torch.Tensor], torch.Tensor]]:
    """(encoder caching what `transform` does per image, function finishing a cached batch).

    A v2 Compose ending in PILToTensor + ToDtype/Normalize is cached as uint8 and finished per batch;
    any other transform is cached whole, as float16, and the finishing step is the identity.
    """
    image_part, batch_part = split_batchable(transform)
    encoder = PixelEncoder(image_part)

    def finish(batch: torch.Tensor) -> torch.Tensor:  # [B, 3 * H * W] or [B, 3, H, W] -> [B, 3, H, W] float
        images = batch.reshape(-1, *encoder.shape)
        if batch_part is None:
            return images.float()
        return batch_part(images.to(torch.uint8))

    return encoder, finish


class PixelRows:
    """Pixel caches end to end: global row i (cache k's rows follow cache k - 1's) -> its image."""

    def __init__(self, caches: Sequence, shape: tuple[int, ...]) -> None:
        self.caches, self.shape = list(caches), tuple(shape)
        self.bounds = np.cumsum([0] + [len(c) for c in self.caches])  # [K + 1] first global row of each cache

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __call__(self, index: np.ndarray) -> torch.Tensor:
        """Images at global rows `index` as [B, 3, H, W], in the caches' dtype (uint8, or float16 -> float32)."""
        index = np.asarray(index, dtype=np.int64)
        uint8 = self.caches[0].dtype == "uint8"
        out = torch.empty(len(index), *self.shape, dtype=torch.uint8 if uint8 else torch.float32)
        part = np.searchsorted(self.bounds, index, side="right") - 1  # [B] which cache
        for k in np.unique(part):
            sel = part == k
            block = self.caches[k].gather(index[sel] - self.bounds[k], dtype=None if uint8 else "float32")  # [b, 3HW]
            out[torch.from_numpy(np.flatnonzero(sel))] = torch.from_numpy(block).view(-1, *self.shape)
        return out
