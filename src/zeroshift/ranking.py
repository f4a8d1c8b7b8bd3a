"""Rank free-text labels for image files through any VLM: `zeroshift.predict` (the package root) and
`zeroshift predict` call `predict` here. (Not named predict.py: that module would shadow the function.)
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .data.base import BadImage
from .data.files import walk_images
from .data.images import decode_image
from .data.templates import get_templates
from .errors import ZeroshiftError
from .models.transforms import decode_side, one_thread
from .paths import user_path
from .specs import load, require
from .zeroshot.classifier import check_classnames, classify, zeroshot_weights
from .zeroshot.labels import parse_labels


def image_files(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The image paths named by `images`: each a file (kept as given, even if it is not readable: its
    result says why) or a folder (its image files, recursively, sorted by relative path)."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    found: list[str] = []
    for item in images:
        path = user_path(item)
        if path.is_dir():
            files = walk_images(path)
            if not files:
                raise ZeroshiftError(f"images: folder {path} holds no image files (.jpg, .png, .webp, ...)")
            found += [str(f) for f in files]
        else:
            found.append(os.fspath(item))
    if not found:
        raise ZeroshiftError("images is empty: give one or more image files or folders")
    return found


def predict(
    model, images: str | os.PathLike | Sequence[str | os.PathLike], labels: str | Sequence[str],
    templates: str | None = None, runtime: str = "auto", batch_size: int = 32,
) -> list[dict]:
    """Rank `labels` for each image: `[{"image", "ranking": [{"label", "prob"}, ...]}, ...]`, best first.

    `model`: a spec or a VLM. `images`: files and folders (a folder gives its image files). `labels`: a
    list, or text as the command line takes it ("a,b,c", or a label file; see zeroshot.labels), at
    least two. An image that cannot be read, or whose scores are not finite (a ranking of NaNs ranks
    nothing, and NaN is not JSON), gets `{"image", "error"}` instead of a ranking.
    """
    require(model, "vlm", "model", command="predict")  # first, before loading: an image encoder ranks no labels
    names = parse_labels(labels, files=True) if isinstance(labels, str) else list(labels)
    names = check_classnames(names, at_least=2)  # before loading: a bad label list fails at once
    prompts = get_templates(templates, None)
    paths = image_files(images)
    if batch_size < 1:
        raise ZeroshiftError(f"batch_size must be at least 1, got {batch_size}")
    vlm = load(model, runtime=runtime) if isinstance(model, str) else model
    weights = zeroshot_weights(vlm, names, prompts)  # [C, d]
    results: list[dict] = [{"image": p} for p in paths]
    ok: list[int] = []
    tensors, side = [], decode_side(vlm.image_transform)  # as embed and eval decode: same pixels, same answer
    for i, p in enumerate(paths):
        try:
            with one_thread():
                tensors.append(vlm.image_transform(decode_image(user_path(p), side)))
            ok.append(i)
        except BadImage as e:
            results[i]["error"] = str(e) or "not a readable image"
    for start in range(0, len(ok), batch_size):
        batch = torch.stack(tensors[start:start + batch_size])  # [B, 3, H, W]
        probs = classify(vlm.encode_image(batch), weights).softmax(dim=-1)  # [B, C]
        for row, i in zip(probs, ok[start:start + batch_size]):
            if not bool(torch.isfinite(row).all()):
                results[i]["error"] = ("the model gave non-finite scores (NaN or inf) for this image; "
                                       "its features overflowed or the model is broken")
                continue
            order = row.argsort(descending=True).tolist()
            results[i]["ranking"] = [{"label": names[j], "prob": round(float(row[j]), 6)} for j in order]
    return results
