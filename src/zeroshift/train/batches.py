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

from .. import distributed as dist
from ..models.transforms import one_thread


class Epoch:
    """One epoch's batches out of `n` rows. Global batch b is rows [b * G, (b + 1) * G) of the
    permutation (G = `batch_size` rounded down to a multiple of the world size) and rank r takes its
    r-th slice, so N ranks at batch G / N see exactly the rows one process sees at batch G. A last,
    smaller global batch is shared evenly; one whose per-rank share is below `min_batch` is dropped
    (BatchNorm needs two)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int,
                 make: Callable[[np.ndarray, torch.Generator], Any], min_batch: int = 1) -> None:
        self.world, self.rank = dist.world_size(), dist.rank()
        self.seed, self.epoch, self.make = seed, epoch, make
        self.per_rank = max(1, batch_size // self.world)
        self.order = np.random.default_rng([seed, epoch]).permutation(n)  # [n]
        self.full, rest = divmod(n, self.per_rank * self.world)
        self.last = rest // self.world  # rows per rank in the last, partial global batch
        self.n = self.full + (self.last >= max(1, min_batch))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        return self.from_batch(0)

    def rows(self, b: int) -> np.ndarray:
        """This rank's rows of batch b."""
        size = self.per_rank if b < self.full else self.last
        start = b * self.per_rank * self.world + self.rank * size
        return self.order[start:start + size]

    def from_batch(self, index: int) -> Iterator[Any]:
        """The batches from `index` on, each made exactly as in an uninterrupted epoch. Made on one intra-op
        thread: gathers, flips and crops of a batch are too small to share (measured ~2.5% of a
        student-cnn step on a busy 2-core machine), and the same numbers come out on any thread count."""
        for b in range(index, self.n):
            seed = int(np.random.default_rng([self.seed, self.epoch, b]).integers(2**62))
            with one_thread():
                batch = self.make(self.rows(b), torch.Generator().manual_seed(seed))
            yield batch
