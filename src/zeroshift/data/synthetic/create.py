"""`create`: the `synthetic:` spec -> a clip-art or a diffusers source (the registry's constructor)."""
from __future__ import annotations

from .base import SyntheticSource
from .clipart import ClipartSource
from .clipart_files import CLIPART_MAX_PIXELS, clipart_set
from .diffusion import DiffusersSource
from .prompts import parse_options, resolve_classes, resolve_contexts


def create(arg: str = "", max_side: int | None = None, max_pixels: int = CLIPART_MAX_PIXELS,
           progress: bool = True) -> SyntheticSource:
    """Build `synthetic:key=value,...`. Options: classes=NAME_OR_FILE (a data spec whose classes are
    used, or a file with one name a line; default openclipart), contexts=default|FILE (phrases with
    {c}), n=1000, seed=0, size=128, renderer=clipart|diffusers; clipart=DIR (clip-art folder, default
    the fetched openclipart); pipeline=PATH, steps=20, guidance=7.5, batch=8 (diffusers, which renders
    all n images here, once). `max_pixels` bounds clip-art decoding; `max_side` is accepted like every
    source's and unused (images are size x size)."""
    opts = parse_options(arg)
    if opts["renderer"] == "clipart":
        root, relpaths, opts["clipart"] = clipart_set(opts["clipart"])  # first: says what to fetch
    contexts, opts["contexts"] = resolve_contexts(opts["contexts"])
    classes, opts["classes"] = resolve_classes(opts["classes"])
    if opts["renderer"] == "clipart":
        return ClipartSource(opts, classes, contexts, root, relpaths, max_pixels)
    source = DiffusersSource(opts, classes, contexts)
    source.render(progress)
    return source
