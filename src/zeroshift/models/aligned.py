"""The trainable parts of an aligned VLM (OTTER): projection heads and the choice of finetuned blocks.

An aligned VLM is a pretrained image tower and a pretrained text tower, each followed by a linear
projection head into a joint space of size `dim`. In `locked` mode only the heads (and the logit
scale) are trained; in `finetune` mode the last blocks of both towers are too, and the run stores
those blocks' weights beside the heads. Towers are referenced by spec and rebuilt when loading.
"""
from __future__ import annotations

import torch
from torch import nn

THETA0 = 3.9  # initial log logit scale (exp 3.9 ~ 49), clamped to [1, 100] as OTTER and CLIP do


class Heads(nn.Module):
    """Projection heads image [N, fi] -> [N, d], text [M, ft] -> [M, d], and the learnable logit scale."""

    def __init__(self, image_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.theta = nn.Parameter(torch.tensor(THETA0))
        self.dims = (image_dim, text_dim, dim)

    def scale(self) -> torch.Tensor:
        return self.theta.exp().clamp(1.0, 100.0)


def trainable_blocks(module: nn.Module, n: int) -> list[str]:
    """Names of the parameters in the last `n` blocks of `module` and everything after them: the blocks
    are the children with parameters of its longest Sequential/ModuleList (a transformer's layers, a
    CNN's stages)."""
    if n < 1:
        return []
    names = [name for name, _ in module.named_parameters()]
    best: list[str] = []
    for name, child in module.named_modules():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            blocks = [f"{name}.{i}." if name else f"{i}." for i, c in enumerate(child)
                      if any(True for _ in c.parameters())]
            if len(blocks) > len(best):
                best = blocks
    if not best:
        return names[-1:]
    starts = tuple(best[-n:])
    first = next((k for k, name in enumerate(names) if name.startswith(starts)), len(names))
    return names[first:]
