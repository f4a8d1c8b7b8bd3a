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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, ZeroshiftError


@dataclass(frozen=True)
class Split:
    """Image rows of one source: `fit` trains, `held` scores. Both sorted, disjoint."""

    fit: np.ndarray  # [n_fit] int64
    held: np.ndarray  # [n_held] int64

    def view_rows(self, views: int, held_views: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(fit rows, held rows) of a view source with `views` adjacent views per image: every view of a
        fit image; of a held image its plain view 0 only (every view with `held_views`)."""
        k = np.arange(views)
        fit = (self.fit[:, None] * views + k).reshape(-1)  # [n_fit * K]
        held = (self.held[:, None] * views + (k if held_views else k[:1])).reshape(-1)  # [n_held (* K)]
        return fit, held


def check_share(share: float, option: str = "--holdout") -> None:
    if not 0 <= share < 1:
        raise ZeroshiftError(f"{option} is the share of images held out, in [0, 1); got {share:g}")


def split_images(n: int, share: float, seed: int, what: str = "the fit data", option: str = "--holdout",
                 min_fit: int = 2) -> Split:
    """A seeded split of `n` images: round(share * n) held out (at least one; none for share 0), the rest
    fit. One-line DataError when fewer than `min_fit` fit images are left."""
    check_share(share, option)
    held_n = max(1, int(round(share * n))) if share > 0 else 0  # a small folder still holds one image out
    if n - held_n < min_fit:
        raise DataError(f"{option} {share:g} of {what}'s {n} usable images leaves {max(0, n - held_n)} fit image(s); "
                        f"at least {min_fit} are needed (more images, or {option} 0)")
    order = np.random.default_rng([seed, n]).permutation(n)  # [n]
    return Split(fit=np.sort(order[held_n:]), held=np.sort(order[:held_n]))


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
