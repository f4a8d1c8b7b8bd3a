"""transfer's fit rows: which cached rows of the encoder's and the teacher's features a bridge is fit on,
over one or more sources (each cached on its own, read end to end), split per source by image into fit
and held out, with the chunked moments pass of the closed form and the seeded training batches."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import distributed as dist
from ..cache import Features
from ..cache.views import views_in
from ..data.augment import drop_mixed_with, parse_augment
from ..errors import CacheError, CacheMismatch, DataError, ZeroshiftError
from ..models.bridge import Moments
from ..train.batches import Epoch
from .holdout import Split, split_images
from .selection import HeldOut

STATS_ROWS = 4096  # rows per chunk of the statistics pass


def parts_of(feats: Features | Sequence[Features]) -> list[Features]:
    """One cache or several as a list of them (at least one)."""
    parts = list(feats) if isinstance(feats, (list, tuple)) else [feats]
    if not parts:
        raise ZeroshiftError("a bridge is fit on at least one source's features; got none")
    return parts


class Stacked:
    """Several feature caches end to end, with the reader API FitRows uses: position i of cache k is
    global position bounds[k] + i. Reads stay per cache, so a chunk costs memory of the chunk alone."""

    def __init__(self, parts: Sequence[Features]) -> None:
        self.parts = list(parts)
        dims = {p.dim for p in self.parts}
        if len(dims) > 1:
            raise CacheMismatch(f"the fit caches hold features of different sizes ({sorted(dims)}-d): "
                                f"{', '.join(str(p.path) for p in self.parts)}")
        self.dim = self.parts[0].dim
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])  # [K + 1] first global position of each

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def locate(self, position: int) -> tuple[Features, int]:
        """(cache, its own position) of global `position`."""
        k = int(np.searchsorted(self.bounds, position, side="right")) - 1
        return self.parts[k], int(position - self.bounds[k])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at global `positions` as [B, dim] float32."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self.parts) == 1:
            return self.parts[0].gather(positions)
        out = np.empty((len(positions), self.dim), dtype=np.float32)  # [B, dim]
        part = np.searchsorted(self.bounds, positions, side="right") - 1  # [B] which cache
        for k in np.unique(part):
            sel = part == k
            out[sel] = self.parts[k].gather(positions[sel] - self.bounds[k])
        return out


class FitRows:
    """Which cached rows the fit uses, over one or more sources (`source[k]` and, paired, `teacher[k]`
    are the encoder's and the teacher's caches of source k). Paired, the rows of each source valid in
    both its caches (by Features.index); unpaired, every valid row of each cache, on its own. With
    `holdout` (paired), a seeded share of each source's images valid in both is held out (holdout.py;
    with `views` adjacent view rows per image, all of an image's views go together): `held` holds the
    plain-view positions (source, teacher) of those, and the fit rows are every view of the others.
    Positions are global over the sources' caches end to end (Stacked); `used` counts the fit rows of
    each source cache and of each teacher cache, `splits` the (fit, held) images of each paired source."""

    def __init__(self, source: Features | Sequence[Features], teacher: Features | Sequence[Features], paired: bool,
                 views: int = 1, holdout: float = 0.0, seed: int = 0) -> None:
        sources, teachers = parts_of(source), parts_of(teacher)
        if paired and len(sources) != len(teachers):
            raise ZeroshiftError(f"paired fitting needs a teacher cache per source: {len(sources)} source and "
                                 f"{len(teachers)} teacher cache(s)")
        self.source, self.teacher, self.paired = Stacked(sources), Stacked(teachers), paired
        self.held: tuple[np.ndarray, np.ndarray] | None = None
        self.images: int | None = None  # fit images, with a held-out split
        self.splits: list[tuple[int, int]] = []
        if paired:
            ps, pc, held_s, held_c = [], [], [], []
            for k, (s, t) in enumerate(zip(sources, teachers)):
                a, b, held = self._pair(s, t, views, holdout, seed, len(sources) > 1)
                ps.append(self.source.bounds[k] + a)
                pc.append(self.teacher.bounds[k] + b)
                if held is not None:
                    held_s.append(self.source.bounds[k] + held[0])
                    held_c.append(self.teacher.bounds[k] + held[1])
            self.ps, self.pc = np.concatenate(ps), np.concatenate(pc)  # [N] global positions
            if holdout > 0:
                self.held = (np.concatenate(held_s), np.concatenate(held_c))
                self.images = sum(f for f, _ in self.splits)
            self.used = (tuple(len(p) for p in ps), tuple(len(p) for p in pc))
        else:
            self.ps, self.pc = np.arange(len(self.source)), np.arange(len(self.teacher))
            self.used = (tuple(len(p) for p in sources), tuple(len(p) for p in teachers))
        for what, rows in (("source", self.ps), ("teacher", self.pc)):
            if len(rows) < 2:
                pair = " valid in both caches" if paired else ""
                raise DataError(f"the fit data has {len(rows)} {what} image(s){pair}; a bridge needs at least 2")

    def _pair(self, source: Features, teacher: Features, views: int, holdout: float, seed: int,
              named: bool) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """One source's (fit positions in its source cache, in its teacher cache, held-out positions or None)."""
        prints = [getattr(f, "manifest", {}).get("fingerprint") for f in (source, teacher)]
        if None not in prints and prints[0] != prints[1]:
            raise DataError(f"paired fitting needs both encoders' features of the same images, but {source.path} "
                            f"and {teacher.path} come from different data; pass the teacher's as unpaired data")
        _, ps, pc = np.intersect1d(source.index, teacher.index, return_indices=True)
        if holdout <= 0:
            return ps, pc, None
        common = source.index[ps]  # [N] source rows valid in both caches
        images = np.unique(common // views)  # [n] images with at least one such row
        data_spec = getattr(source, "manifest", {}).get("data_spec")
        what = (data_spec if named else None) or "the fit data"  # a source is named among several
        split = split_images(len(images), holdout, seed, what=what)
        fit_rows, held_rows = Split(images[split.fit], images[split.held]).view_rows(views)
        drawn = views_in(data_spec)  # the views' recipe, from the cache
        if drawn is not None:  # no fit view shows a held image
            fit_rows = drop_mixed_with(fit_rows, images[split.held], parse_augment(drawn[2]),
                                       source.manifest["rows"] // views, views)
        keep, held = np.isin(common, fit_rows), np.isin(common, held_rows)  # [N] masks
        self.splits.append((len(split.fit), len(split.held)))
        return ps[keep], pc[keep], (ps[held], pc[held])

    def _read(self, feats: Stacked, positions: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(feats.gather(positions))  # [B, dim]
        if not torch.isfinite(x).all():
            cache, at = feats.locate(int(positions[int((~torch.isfinite(x).all(dim=1)).nonzero()[0])]))
            raise CacheError(f"feature cache {cache.path} holds NaN or inf (source row {int(cache.index[at])}): "
                             "re-embed it with overwrite")
        return x

    def held_out(self, weights: torch.Tensor) -> HeldOut | None:
        """The held-out images' scorer over the vocabulary's class vectors `weights` [C, d]."""
        if self.held is None:
            return None
        hs, hc = self.held
        return HeldOut(self._read(self.source, hs), self._read(self.teacher, hc), weights)

    def moments(self, scatter: bool) -> tuple[Moments, Moments, int, int]:
        """One pass over the fit rows: (source moments, teacher moments, their sides). Paired, one
        Moments holds both sides (0 source, 1 teacher) and their cross products. Under torchrun each
        rank reads every world-th chunk and the sums are added up across ranks."""
        if self.paired:
            m = Moments(scatter)
            self._pass(m, (self.source, self.ps), (self.teacher, self.pc))
            return m, m, 0, 1
        out = []
        for feats, rows in ((self.source, self.ps), (self.teacher, self.pc)):
            m = Moments(scatter=False)
            self._pass(m, (feats, rows))
            out.append(m)
        return out[0], out[1], 0, 0

    def _pass(self, m: Moments, *sides: tuple[Stacked, np.ndarray]) -> None:
        m.start(*(self._read(f, rows[:STATS_ROWS]) for f, rows in sides))  # the same shift on every rank
        for s in range(dist.rank() * STATS_ROWS, len(sides[0][1]), dist.world_size() * STATS_ROWS):
            m.update(*(self._read(f, rows[s:s + STATS_ROWS]) for f, rows in sides))
        m.all_reduce()

    def batches(self, batch_size: int, seed: int, prompts: int = 0) -> Callable[[int], Epoch]:
        """A function of the epoch giving that epoch's shuffled batches {"source": [B, m], "teacher":
        [B, d], "text": [T] rows of a `prompts`-row vocabulary} (for train/loop.py; this rank's share
        under torchrun). Paired, rows are shuffled together; unpaired, each side on its own, the
        smaller one wrapping around."""
        n = max(len(self.ps), len(self.pc))

        def epoch(e: int) -> Epoch:
            other = None if self.paired else np.random.default_rng([seed, e, 1]).permutation(n)  # [n]

            def make(rows: np.ndarray, g: torch.Generator) -> dict[str, torch.Tensor]:
                c = rows if other is None else other[rows]
                return {"source": torch.from_numpy(self.source.gather(self.ps[rows % len(self.ps)])),
                        "teacher": torch.from_numpy(self.teacher.gather(self.pc[c % len(self.pc)])),
                        "text": torch.randint(max(prompts, 1), (min(batch_size, prompts),), generator=g)}

            return Epoch(n, batch_size, seed, e, make)

        return epoch
