"""`zeroshift embed`: embed a data source with a model into a feature cache."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .options import command, write_config
from .table import print_table


@dataclass(frozen=True)
class EmbedConfig:
    model: str = field(metadata={"help": "model spec (VLM or image encoder)"})
    data: str = field(metadata={"help": "data spec, e.g. fashion-mnist:test or folder:images/"})
    out: str | None = field(default=None, metadata={"help": "cache folder (default: under $ZEROSHIFT_HOME/features)"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    dtype: str = field(default="float32", metadata={"help": "stored dtype", "choices": ["float32", "float16"]})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    device: str = field(default="auto", metadata={
        "help": "where the model runs: auto (cuda:LOCAL_RANK when CUDA is present, else cpu), cpu, cuda, cuda:N"})
    workers: int | None = field(default=None, metadata={"help": "decoding worker processes (default: automatic)"})
    shard_rows: int | None = field(default=None, metadata={
        "help": "source rows per shard, the unit of resume and of the split across torchrun ranks (default 4096)"})
    views: int | None = field(default=None, metadata={
        "help": "cache K seeded augmented views of every image instead of the images (view 0 is the image itself; "
                "see docs/teaching.md)"})
    augment: str | None = field(default=None, metadata={
        "help": "the views' recipe, name=value,...: crop (area range), flip, jitter, bg (random|white), size, seed, "
                "mix (share blended with another image) (default: crop=0.35-1,flip=0.5,jitter=0.4,bg=random,size=256,"
                "seed=0, mix=0; none: every view plain)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a cache made by another model or data"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar (for logs); the table is still printed"})

    def __post_init__(self) -> None:
        from zeroshift.data.augment import parse_augment
        from zeroshift.errors import ZeroshiftError

        if self.views is not None and self.views < 1:
            raise ZeroshiftError(f"--views must be at least 1; got {self.views}")
        if self.augment is not None and self.views is None:
            raise ZeroshiftError("--augment draws views: give --views K with it")
        parse_augment(self.augment)  # a bad recipe fails before any model or data is opened


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    command(parser, EmbedConfig, run)


def run(cfg: EmbedConfig) -> int:
    from zeroshift import distributed as dist
    from zeroshift.cache.views import embed_views

    feats = embed_views(cfg.model, cfg.data, cfg.out, views=cfg.views or 1, augment=cfg.augment,
                        batch_size=cfg.batch_size, dtype=cfg.dtype, shard_rows=cfg.shard_rows, runtime=cfg.runtime,
                        workers=cfg.workers, overwrite=cfg.overwrite, progress=not cfg.quiet,
                        device=None if cfg.device == "auto" else cfg.device)
    if dist.rank() == 0:
        used = {"runtime": (feats.summary or {}).get("runtime", cfg.runtime),  # what ran, not 'auto'
                "shard_rows": feats.manifest["shard_rows"], "runtime_requested": cfg.runtime}
        write_config(cfg, Path(feats.path) / "config.json", **used)
    s = feats.summary or {}
    rows = [(feats.spec, feats.manifest["data_spec"], len(feats), feats.dim, s.get("skipped", 0),
             s.get("shards_reused", 0), s.get("seconds", 0.0), s.get("images_per_s", 0.0))]
    speed = "images/s" if s.get("world_size", 1) == 1 else f"images/s (rank 0 of {s['world_size']})"
    print_table(rows, ["model", "data", "rows", "dim", "skipped", "reused shards", "seconds", speed])
    skipped = feats.manifest.get("skipped") or []
    for item in skipped[:20]:
        print(f"  skipped {item}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (see manifest.json)")
    print(f"cache: {feats.path}")
    return 0
