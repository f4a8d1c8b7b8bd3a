"""Images to what an exported graph takes, with numpy and Pillow only (no PyTorch, no torchvision).

An export's sidecar holds its preprocessing recipe (models/transforms.recipe): how to decode a file
(as zeroshift decodes it: EXIF orientation applied, transparency composited on white, JPEGs drafted to
`decode.max_side`), then Pillow steps that bring the image to `size` [H, W]. The result is the uint8
RGB array [H, W, 3] a pixels-in graph takes; its conversion, scaling and normalisation are inside the
graph. The steps reproduce torchvision's Resize and CenterCrop on PIL images exactly (both call Pillow):

    resize  edge=short: the shorter side becomes `size`, the longer int(size * long / short) (capped at
            max_size); edge=both: exactly `size` [H, W]; Pillow's resize with `interpolation`
    center_crop  [H, W] from the middle (top = round((h - H) / 2)), zero-padded first when smaller

    from zeroshift.export.preprocess import read_sidecar, load_batch
    info = read_sidecar("classifier.onnx")
    images, errors = load_batch(["cat.jpg", "dog.png"], info["preprocess"])   # [N, H, W, 3] uint8
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..data.base import BadImage
from ..data.images import ImageSource, decode_image, load_rgb
from ..errors import ZeroshiftError

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
SIDECAR_SUFFIX = ".json"


def resized_size(height: int, width: int, step: dict) -> tuple[int, int]:
    """(h, w) after a resize step: torchvision's _compute_resized_output_size."""
    if step["edge"] == "both":
        return int(step["size"][0]), int(step["size"][1])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(step["size"]), int(int(step["size"]) * long / short)
    max_size = step.get("max_size")
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), int(max_size)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's center_crop on a PIL image: zero padding where the crop is larger, then the middle."""
    w, h = image.size
    if height > h or width > w:
        left, top = max(width - w, 0) // 2, max(height - h, 0) // 2
        right, bottom = (max(width - w, 0) + 1) // 2, (max(height - h, 0) + 1) // 2
        padded = Image.new(image.mode, (w + left + right, h + top + bottom), 0)
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
        if (w, h) == (width, height):
            return image
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def resize_crop(image: Image.Image, recipe: dict) -> np.ndarray:
    """An RGB PIL image through the recipe's steps: uint8 [H, W, 3], H x W = recipe['size']."""
    for step in recipe["steps"]:
        if step["op"] == "resize":
            h, w = resized_size(image.height, image.width, step)
            if (h, w) != (image.height, image.width):
                image = image.resize((w, h), resample=RESAMPLING[step["interpolation"]])
        elif step["op"] == "center_crop":
            image = _center_crop(image, int(step["size"][0]), int(step["size"][1]))
        else:
            raise ZeroshiftError(f"unknown preprocessing step {step.get('op')!r} in the sidecar; this zeroshift "
                                 "is older than the one that wrote it")
    array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)  # [H, W, 3]
    if list(array.shape[:2]) != list(recipe["size"]):
        raise ZeroshiftError(f"the preprocessing steps gave {array.shape[1]}x{array.shape[0]} pixels, not the "
                             f"{recipe['size'][1]}x{recipe['size'][0]} the graph takes; the sidecar is damaged")
    return array


def load(src: ImageSource | Image.Image | np.ndarray, recipe: dict) -> np.ndarray:
    """A file, encoded bytes, PIL image or array, decoded as zeroshift decodes it, through the recipe:
    uint8 [H, W, 3]. BadImage when it cannot be decoded."""
    side = recipe.get("decode", {}).get("max_side")
    if isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        image = decode_image(src, side)
    else:
        image = load_rgb(src, side)
    return resize_crop(image, recipe)


def load_batch(sources: Sequence, recipe: dict) -> tuple[np.ndarray, dict[int, str]]:
    """The images that decode, stacked: uint8 [N, H, W, 3], and {index: reason} for those that do not."""
    arrays, errors = [], {}
    for i, src in enumerate(sources):
        try:
            arrays.append(load(src, recipe))
        except BadImage as e:
            errors[i] = str(e) or "not a readable image"
    h, w = recipe["size"]
    return (np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)), errors


def sidecar_path(graph: str | os.PathLike) -> Path:
    return Path(graph).with_name(Path(graph).name + SIDECAR_SUFFIX)


def read_sidecar(graph: str | os.PathLike) -> dict:
    """The sidecar `<graph>.json` that `zeroshift export` wrote beside a graph; one-line ZeroshiftError
    when the graph or its sidecar is missing or unreadable."""
    graph = Path(graph)
    if not graph.is_file():
        raise ZeroshiftError(f"no graph at {graph}" + (" (a folder: give its image.onnx)" if graph.is_dir() else ""))
    path = sidecar_path(graph)
    if not path.is_file():
        raise ZeroshiftError(f"{graph} has no sidecar {path.name} beside it: this runner takes only graphs that "
                             "`zeroshift export` wrote (re-export, or copy the sidecar with the graph)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ZeroshiftError(f"{path} is not a readable sidecar ({type(e).__name__}); re-export the graph") from None
    if not isinstance(info, dict) or info.get("format") != "onnx" or not isinstance(info.get("kind", "classifier"), str):
        raise ZeroshiftError(f"{path} is not a zeroshift export sidecar; re-export the graph")
    return info
