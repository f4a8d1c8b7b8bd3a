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


# ---------------------------------------------------------------- transforms as data (export's pixels-in graphs)
RECIPE_VERSION = 1
_RGB_STEPS = ("MaybeConvertMode", "_convert_to_rgb", "PILToTensor", "ToImage", "MaybePILToTensor")
_UNIT_STEPS = ("ToTensor", "MaybeToTensor")  # PIL -> float in [0, 1]
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def _interpolation(mode) -> str:
    name = str(getattr(mode, "value", mode)).lower()
    if name == "nearest-exact":
        name = "nearest"
    if name not in _INTERPOLATIONS:
        raise ValueError(f"interpolation {mode!r}")
    return name


def _hw(size) -> list[int]:
    size = [int(s) for s in (size if isinstance(size, (list, tuple)) else [size])]
    return size * 2 if len(size) == 1 else size


def _step(step, steps: list[dict], pixels: dict) -> None:
    """Append what one transform step does to `steps` (geometry) or `pixels` (scale, mean, std)."""
    name = getattr(step, "__name__", None) or type(step).__name__  # a function's name, else its class's
    if type(step).__name__ == "Compose":  # torchvision's v1 or v2
        for inner in step.transforms:
            _step(inner, steps, pixels)
    elif callable(getattr(step, "recipe", None)):  # a backend's transform that describes itself
        own = step.recipe()
        steps.extend(own["steps"])
        pixels.update(own["pixels"])
    elif type(step).__name__ == "Resize" and hasattr(step, "size"):
        size = step.size if isinstance(step.size, (list, tuple)) else [step.size]
        if len(size) == 1:
            steps.append({"op": "resize", "edge": "short", "size": int(size[0]),
                          "max_size": step.max_size, "interpolation": _interpolation(step.interpolation)})
        else:
            steps.append({"op": "resize", "edge": "both", "size": _hw(size), "max_size": None,
                          "interpolation": _interpolation(step.interpolation)})
    elif type(step).__name__ == "CenterCrop":
        steps.append({"op": "center_crop", "size": _hw(step.size)})
    elif name in _RGB_STEPS:
        if name in ("PILToTensor", "ToImage", "MaybePILToTensor") and pixels["scale"] is None:
            pixels["scale"] = 1.0  # uint8 values as they are, unless a later ToDtype scales them
    elif name in _UNIT_STEPS or type(step).__name__ == "ConvertImageDtype":
        pixels["scale"] = 1.0 / 255.0
    elif type(step).__name__ == "ToDtype":
        pixels["scale"] = 1.0 / 255.0 if step.scale else 1.0
    elif type(step).__name__ == "Normalize":
        for key in ("mean", "std"):
            value = getattr(step, key)
            pixels[key] = [float(v) for v in (value.flatten().tolist() if torch.is_tensor(value) else value)]
    else:
        raise ValueError(f"step {step!r}")


def recipe(transform: Callable) -> dict:
    """What `transform` (RGB PIL -> [3, H, W]) does, as data a runtime without PyTorch can follow:
    `decode` is how images are decoded (data/images.decode_image, to a shorter side of `max_side`, as
    predict and embed do); `steps` (resize, center_crop: Pillow operations, in order) bring one to `size`
    [H, W] as uint8,
    and `pixels` says how a graph makes its float input of those: (x * scale - mean) / std per channel.
    NoPixelRecipe when a step cannot be described (a backend's own function, an unknown class)."""
    from ..errors import NoPixelRecipe

    steps: list[dict] = []
    pixels: dict = {"scale": None, "mean": [0.0] * 3, "std": [1.0] * 3}
    try:
        _step(transform, steps, pixels)
    except ValueError as e:
        raise NoPixelRecipe(f"the image transform {transform!r} cannot be written as a preprocessing recipe "
                             f"(its {e} has no Pillow equivalent); export with --input float") from None
    if pixels["scale"] is None:
        raise NoPixelRecipe(f"the image transform {transform!r} never turns the image into a tensor; "
                             "export with --input float")
    size = None
    for s in steps:
        if s["op"] == "center_crop" or s["edge"] == "both":
            size = list(s["size"])
        else:
            size = None  # a short-side resize after the last crop leaves the size to the image's shape
    if size is None:
        raise NoPixelRecipe(f"the image transform {transform!r} gives no fixed image size (no crop after its "
                             "resize); export with --input float")
    probe = probe_images(1, size=(64, 48))[0]
    out = transform(probe)
    if tuple(out.shape) != (3, *size):
        raise NoPixelRecipe(f"the image transform {transform!r} gives {tuple(out.shape)}, not the [3, {size[0]}, "
                             f"{size[1]}] its steps describe; export with --input float")
    for key in ("mean", "std"):
        if len(pixels[key]) == 1:
            pixels[key] = pixels[key] * 3
    decode = {"max_side": 2 * max(size), "orientation": "exif", "transparency": "on white"}  # as decode_side
    return {"version": RECIPE_VERSION, "decode": decode, "steps": steps, "size": size, "pixels": pixels}
