"""Classify image files with free-text labels through any VLM."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .data.images import decode_image
from .data.base import BadImage
from .data.templates import get_templates
from .errors import ZeroshiftError
from .models.transforms import decode_side, one_thread
from .specs import load, require
from .zeroshot.classifier import classify, zeroshot_weights


def predict(
    model, images: Sequence[str | Path], labels: Sequence[str], templates: str | None = None,
    runtime: str = "auto", batch_size: int = 32,
) -> list[dict]:
    """For each image: `{"image", "ranking": [{"label", "prob"}, ...]}` best first, or `{"image", "error"}`
    for an image that cannot be read or whose scores are not finite (a ranking of NaNs ranks nothing, and
    NaN is not JSON: the image is reported failed, like an unreadable one, rather than ranked)."""
    if not images:
        raise ZeroshiftError("no images given")
    require(model, "vlm", "model", command="predict")  # before loading: an image encoder ranks no labels
    vlm = load(model, runtime=runtime) if isinstance(model, str) else model
    weights = zeroshot_weights(vlm, list(labels), get_templates(templates, None))  # [C, d]
    results: list[dict] = [{"image": str(p)} for p in images]
    ok: list[int] = []
    tensors, side = [], decode_side(vlm.image_transform)  # as embed and eval decode: same pixels, same answer
    for i, p in enumerate(images):
        try:
            with one_thread():
                tensors.append(vlm.image_transform(decode_image(p, side)))
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
            results[i]["ranking"] = [{"label": labels[j], "prob": round(float(row[j]), 6)} for j in order]
    return results
