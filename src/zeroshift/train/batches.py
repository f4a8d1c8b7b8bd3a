"""Epochs of row batches that depend on (seed, epoch, batch) only, so a resumed run sees the same data.

Methods that train on rows (cached features, cached pixels) describe a batch by `make(rows, g)`:
the row indices it holds and a torch.Generator seeded for that batch (augmentation); `Epoch` does
the rest: a permutation seeded by (seed, epoch), this rank's share of it under torchrun, the cut into
batches, and `from_batch(i)` for the shared loop's resume.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..cache import distributed as dist


class Epoch:
    """One epoch's batches of `batch_size` rows (over all ranks) out of `n`; a last batch smaller than
    `min_batch` rows is dropped (BatchNorm needs two)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int,
                 make: Callable[[np.ndarray, torch.Generator], Any], min_batch: int = 1) -> None:
        world, rank = dist.world_size(), dist.rank()
        self.seed, self.epoch, self.make = seed, epoch, make
        self.per_rank = max(1, batch_size // world)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        share = n // world
        self.order = order[rank * share:(rank + 1) * share]  # [share] this rank's rows
        full, rest = divmod(len(self.order), self.per_rank)
        self.n = full + (rest >= min_batch and rest > 0)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        return self.from_batch(0)

    def from_batch(self, index: int) -> Iterator[Any]:
        """The batches from `index` on, each made exactly as in an uninterrupted epoch."""
        for b in range(index, self.n):
            rows = self.order[b * self.per_rank:(b + 1) * self.per_rank]
            seed = int(np.random.default_rng([self.seed, self.epoch, b]).integers(2**62))
            yield self.make(rows, torch.Generator().manual_seed(seed))
