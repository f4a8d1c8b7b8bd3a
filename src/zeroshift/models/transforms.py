"""Small preprocessing helpers shared by the image backends: normalisations, resize-and-crop, probes.

Backends with their own preprocessing (open_clip, timm, torchvision weights, transformers) use it;
these helpers are for the ones that bring none (ONNX files, EfficientNet-Lite) and for code that
needs a realistic input batch without data (export, checks, dimension probes).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

# name -> (mean, std) on pixels scaled to [0, 1]
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # pixels scaled to [-1, 1]
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels in [0, 1]
}


def normalize(norm: str) -> T.Normalize:
    """The Normalize step for a named normalisation (see NORMS)."""
    if norm not in NORMS:
        from ..errors import SpecError

        raise SpecError(f"unknown normalisation {norm!r}; known: {', '.join(NORMS)}")
    mean, std = NORMS[norm]
    return T.Normalize(list(mean), list(std))


def resize_crop(size: int, norm: str = "imagenet", crop_pct: float = 0.875,
                interpolation: str = "bicubic") -> T.Compose:
    """RGB PIL -> float [3, size, size]: resize the short side to size / crop_pct, centre crop, normalise."""
    mode = T.InterpolationMode(interpolation)
    return T.Compose([
        T.Resize(round(size / crop_pct), interpolation=mode, antialias=True),
        T.CenterCrop(size),
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        normalize(norm),
    ])


class ArrayTransform:
    """Wrap a PIL -> HWC numpy preprocessing function (a backend's own) into PIL -> CHW float tensor."""

    def __init__(self, fn: Callable[[Image.Image], np.ndarray]) -> None:
        self.fn = fn

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.ascontiguousarray(self.fn(image), dtype=np.float32)  # [H, W, 3]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [3, H, W]

    def __repr__(self) -> str:
        return f"ArrayTransform({getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__name__', self.fn)})"


def probe_images(n: int, seed: int = 0, size: tuple[int, int] = (300, 260)) -> list[Image.Image]:
    """`n` deterministic RGB images (smooth colour fields plus noise), realistic enough to probe a model."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([np.sin(3 * xx + a), np.cos(4 * yy + b), np.sin(2 * (xx + yy) + c)], -1)  # [h, w, 3]
        pixels = 127.5 * (1 + base) + rng.normal(0, 20, (h, w, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return images


def decode_side(transform: Callable[[Image.Image], torch.Tensor]) -> int | None:
    """The shorter side to decode images to for `transform`: twice its output side (a probe image's),
    so a JPEG is drafted at a reduced DCT scale without losing detail the resize would keep. None when
    the transform gives no [3, H, W] tensor (images are then decoded whole, within the pixel bound)."""
    try:
        out = transform(probe_images(1, size=(64, 48))[0])
    except Exception:  # noqa: BLE001 - a transform that rejects the probe: no reduction, no harm
        return None
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        return None
    return 2 * int(max(out.shape[1:]))  # [3, H, W]


def probe_batch(transform: Callable[[Image.Image], torch.Tensor], n: int, seed: int = 0) -> torch.Tensor:
    """`n` probe images through `transform`, stacked: [n, 3, H, W]."""
    return torch.stack([transform(image) for image in probe_images(n, seed)])


@contextmanager
def one_thread() -> Iterator[None]:
    """Run per-image tensor ops on one intra-op thread: shared between threads they ran ~40x slower
    on a busy 2-core machine (Normalize of one 224px image: 14 ms vs 0.38 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def split_batchable(transform: Callable) -> tuple[Callable, Callable | None]:
    """(per-image part, per-batch part) of a v2.Compose whose last steps are ToDtype and/or Normalize.

    Those steps give the same numbers on a uint8 batch [B, 3, H, W] as image by image, in one
    vectorised call instead of B small ones (measured: 0.7 of the 1.4 ms a 224px image costs). Other
    transforms come back whole, with no batch part.
    """
    steps = list(getattr(transform, "transforms", []))
    if not isinstance(transform, T.Compose) or not steps:
        return transform, None
    k = len(steps)
    while k > 0 and isinstance(steps[k - 1], (T.ToDtype, T.Normalize)):
        k -= 1
    if k == len(steps) or k == 0 or not isinstance(steps[k - 1], T.PILToTensor):
        return transform, None
    return T.Compose(steps[:k]), T.Compose(steps[k:])
