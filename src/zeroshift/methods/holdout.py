"""The label-free held-out split that distill and transfer (and shrink) score themselves on.

A seeded share of the *images* (never single views of an image) is kept out of training. Each epoch the
model is scored on the plain view of those images by how often its zero-shot top-1 over a broad
vocabulary (the ImageNet class names by default) is the teacher's top-1, and by the mean cosine to the
teacher's embedding: no labels are read, so it works on a user's unlabelled folder. Methods keep the
best epoch by agreement, choose ridge strengths by it, and stop the mlp bridge with it.

Splitting is an index operation over a source's rows (or a view source's rows, image = row // K), so
the feature caches are always those of the whole folder, shared by every command and every split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.split import Split, check_share, split_images  # noqa: F401  (re-exported)
from ..errors import DataError


class Agreement:
    """Label-free scores against the teacher on held-out images: `agreement`, the share whose top-1 over
    the vocabulary `weights` [C, d] equals the teacher's, and `cosine`, the mean cosine to the teacher's
    embedding `teacher` [n, d]."""

    def __init__(self, teacher: torch.Tensor, weights: torch.Tensor) -> None:
        if len(teacher) == 0:
            raise DataError("the held-out split holds no image with a teacher embedding")
        self.teacher = teacher.float()  # [n, d]
        self.weights = F.normalize(weights.float(), dim=-1)  # [C, d]
        self.teacher_top1 = self.top1(self.teacher)  # [n]

    def top1(self, emb: torch.Tensor) -> torch.Tensor:
        """Top-1 class of each embedding over the vocabulary. [n]"""
        return (F.normalize(emb.float(), dim=-1) @ self.weights.T).argmax(-1)

    def __call__(self, emb: torch.Tensor) -> dict[str, float]:
        """Scores of the model's embeddings `emb` [n, d] of the same images, in the same order."""
        emb = emb.float()
        return {"agreement": (self.top1(emb) == self.teacher_top1).float().mean().item(),
                "cosine": F.cosine_similarity(emb, self.teacher, dim=-1).mean().item()}


__all__ = ["Agreement", "Split", "check_share", "split_images"]
