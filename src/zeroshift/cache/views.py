"""View caches: a model's features of K seeded augmented views per image (data/augment.py), as an
ordinary feature cache of the views' data source, so they are sharded, checksummed, resumable and split
by rank under torchrun like any other. A cache records its views in its data spec
(`BASE@views=K:RECIPE`) and its fingerprint; a folder holding views made with other settings than the
ones asked for is refused by name, never mixed.
"""
from __future__ import annotations

import os
from typing import Any

from .. import specs
from ..data.augment import Augment, ViewSource, parse_augment, views_of
from ..data.base import DataSource
from ..errors import CacheMismatch
from ..paths import user_path
from .embed import embed
from .layout import read_manifest
from .store import Features

MARK = "@views="


def views_in(data_spec: str | None) -> tuple[str, int, str] | None:
    """(base data spec, views, canonical recipe) of a view cache's data spec, None for plain rows."""
    if not data_spec or MARK not in data_spec:
        return None
    base, _, rest = data_spec.rpartition(MARK)
    count, _, recipe = rest.partition(":")
    return (base, int(count), recipe) if count.isdigit() else None


def _what(entry: tuple[str, int, str] | None, article: str = "") -> str:
    return "the plain images" if entry is None else f"{article}{entry[1]} views ({entry[2]})"


def check_views(out: str | os.PathLike, source: DataSource) -> None:
    """Refuse the cache folder `out` when it holds rows of the same images made with other views than
    `source`'s (other count or recipe, or plain rows where views are asked, or the reverse)."""
    manifest = read_manifest(user_path(out))
    if not manifest:
        return
    theirs, ours = views_in(manifest.get("data_spec")), views_in(source.spec)
    if theirs == ours:
        return
    base = ours[0] if ours else source.spec
    if (theirs[0] if theirs else manifest.get("data_spec")) != base:
        return  # other images altogether: embed's own check names what differs
    raise CacheMismatch(f"feature cache {out} holds {_what(theirs)} of {base}, not {_what(ours, 'the ')} asked for: "
                        "caches of other augmentation settings are never mixed; pass --overwrite or another --out")


def embed_views(model: Any, data: str | DataSource, out: str | os.PathLike | None = None, *, views: int = 1,
                augment: str | Augment | None = None, overwrite: bool = False, **options: Any) -> Features:
    """`embed` of the `views` views per image of `data` drawn by `augment` (one view: `data` as it is).
    Options are embed's; a folder `out` with other views is refused unless `overwrite`."""
    recipe = parse_augment(augment)  # a bad recipe or model spec fails before any data is opened
    if isinstance(model, str):
        specs.require(model, ("image", "vlm"), "model", command="embed")
    source = specs.dataset(data) if isinstance(data, str) else data
    source = views_of(source, views, recipe)
    if out is not None and not overwrite:
        check_views(out, source)
    return embed(model, source, out, overwrite=overwrite, **options)


__all__ = ["ViewSource", "check_views", "embed_views", "views_in"]
