"""Seeded fit / held-out splits of a source's images, and the data spec suffix that names one.

`split_images(n, share, seed)` holds out round(share * n) images (at least one for a positive share).
Methods split a source's rows by index (the feature caches stay those of the whole source); `shrink`
names its parts as data specs, `SPEC[split=fit,held=0.2,seed=0]` and `SPEC[split=held,...]`, so every
command can be rerun on exactly the images a candidate was fit on, and each part has one cache.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import DataError, SpecError, ZeroshiftError


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


PARTS = ("fit", "held")
SUFFIX = re.compile(r"^(?P<base>.+)\[split=(?P<part>[a-z]+),held=(?P<share>[^,\]]+),seed=(?P<seed>[^,\]]+)\]$")


def split_spec(spec: str, part: str, share: float, seed: int) -> str:
    """The data spec of one part of `spec`'s seeded split: 'tuxpaint[0::2][split=fit,held=0.2,seed=0]'."""
    if part not in PARTS:
        raise ZeroshiftError(f"a split part is fit or held; got {part!r}")
    return f"{spec.strip()}[split={part},held={share:g},seed={seed}]"


def parse_split(spec: str) -> tuple[str, str, float, int] | None:
    """(base spec, part, share, seed) of a split spec; None when `spec` has no split suffix."""
    m = SUFFIX.match(spec.strip())
    if m is None:
        return None
    try:
        share, seed = float(m["share"]), int(m["seed"])
    except ValueError:
        raise SpecError(f"{spec!r}: a split suffix reads [split=fit|held,held=SHARE,seed=N], e.g. "
                        "[split=fit,held=0.2,seed=0]") from None
    if m["part"] not in PARTS or not 0 < share < 1:
        raise SpecError(f"{spec!r}: split= takes fit or held and held= a share in (0, 1); got {m['part']!r} "
                        f"and {m['share']}")
    return m["base"], m["part"], share, seed


__all__ = ["PARTS", "Split", "check_share", "parse_split", "split_images", "split_spec"]
