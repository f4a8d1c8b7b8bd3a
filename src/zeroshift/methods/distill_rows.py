"""distill's training rows: the student's cached pixels of each view beside the teacher's embedding of
that very view (and, for mixup, the teacher's own pixels of it), split by image into fit and held out,
and the seeded batches over them (DESIGN 3.2)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import Features, embed
from ..data.augment import Augment, drop_mixed_with, views_of
from ..data.base import DataSource
from ..errors import CacheMismatch, DataError
from ..models.pixels import PixelRows
from ..models.vlm import VLM
from ..train.batches import Epoch
from .holdout import Split, split_images

PIXEL_SHARD_ROWS = 1024  # a shard of 64 px images is 12 MB as uint8


class Rows:
    """Training rows over one or more sources: cached student pixels beside teacher targets [N, d], and with
    mixup the teacher's own pixels of the same views."""

    def __init__(self, pixels: list[Features], positions: list[np.ndarray], targets: torch.Tensor,
                 texts: np.ndarray | None, shape: tuple[int, ...],
                 teacher_pixels: tuple[list[Features], list[np.ndarray], tuple[int, ...]] | None = None) -> None:
        self.pixels, self.targets, self.texts = PixelRows(pixels, shape), targets, texts
        starts = self.pixels.bounds[:-1]  # [K] first global row of each cache
        self.index = np.concatenate([starts[k] + p for k, p in enumerate(positions)])  # [N] global pixel row
        self.teacher_pixels, self.teacher_index = None, None
        if teacher_pixels is not None:
            caches, where, tshape = teacher_pixels
            self.teacher_pixels = PixelRows(caches, tshape)
            tstarts = self.teacher_pixels.bounds[:-1]
            self.teacher_index = np.concatenate([tstarts[k] + p for k, p in enumerate(where)])  # [N]

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, rows: np.ndarray) -> torch.Tensor:
        """Cached pixels of `rows` as [B, 3, H, W] (uint8 where the cache is)."""
        return self.pixels(self.index[rows])

    def batches(self, batch_size: int, seed: int, augment: str, mixup: float = 0.0) -> Callable[[int], Epoch]:
        """Epochs of batches {pixels [B, 3, H, W], target [B, d], text [B]?}, augmented per (seed, epoch, batch).
        With `mixup` alpha > 0, each batch is mixed with a permutation of itself at one Beta(alpha, alpha)
        weight, student and teacher pixels alike, and carries the mixed teacher pixels for the online target."""

        def make(rows: np.ndarray, g: torch.Generator) -> dict:
            batch = {"pixels": augment_batch(self.images(rows), augment, g), "target": self.targets[rows]}
            if self.texts is not None:
                batch["text"] = torch.from_numpy(self.texts[rows])
            if mixup > 0:
                lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(mixup, mixup))
                perm = torch.randperm(len(rows), generator=g)  # [B]
                batch["pixels"] = mix(batch["pixels"], perm, lam)
                batch["teacher_pixels"] = mix(self.teacher_pixels(self.teacher_index[rows]), perm, lam)
            return batch

        return lambda epoch: Epoch(len(self), batch_size, seed, epoch, make, min_batch=2)


def mix(images: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * images + (1 - lam) * images[perm], rounded back to uint8 where the images are. [B, 3, H, W]"""
    mixed = lam * images.float() + (1 - lam) * images[perm].float()
    return mixed.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else mixed


def augment_batch(images: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips ('flip'), plus one random crop of 75-100% of the side per batch at a
    random place per image, resized back ('light'). [B, 3, H, W] in, same shape and dtype out."""
    if mode == "none":
        return images
    flip = torch.rand(len(images), generator=g) < 0.5  # [B]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if mode == "flip":
        return images
    h, w = images.shape[-2:]
    side = int(torch.randint(math.ceil(0.75 * min(h, w)), min(h, w) + 1, (1,), generator=g))
    ys = torch.randint(0, h - side + 1, (len(images),), generator=g).tolist()
    xs = torch.randint(0, w - side + 1, (len(images),), generator=g).tolist()
    crops = torch.stack([im[:, y:y + side, x:x + side] for im, y, x in zip(images, ys, xs)])  # [B, 3, side, side]
    if side == h == w:
        return crops
    resized = F.interpolate(crops.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return resized.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else resized


def _texts(source: DataSource, rows: np.ndarray) -> list[str]:
    """The text of each row for contrastive-text: its caption, else 'a photo of a {class}.'."""
    out = []
    for r in rows:
        caption = source.captions[r].strip() if source.captions is not None and source.captions[r] else ""
        label = int(source.labels[r]) if source.labels is not None else -1
        if not caption and label >= 0 and source.classes:
            caption = f"a photo of a {source.classes[label]}."
        if not caption:
            raise DataError(f"contrastive-text needs a caption or a class label for every image; row {r} of "
                            f"{source.spec!r} has neither")
        out.append(caption)
    return out


@dataclass
class Prepared:
    """What build_rows made of the training sources: the fit rows, the held-out images' pixels and teacher
    embeddings (plain views, [n, 3, H, W] and [n, d]), the unique caption texts (contrastive-text) and a
    data entry per source for config.json."""

    rows: Rows
    held_images: torch.Tensor | None
    held_targets: torch.Tensor | None
    texts: list[str]
    entries: list[dict]


def split_sources(sources: list[DataSource], holdout: float, seed: int) -> list[Split]:
    """Each source's seeded fit / held-out split of its images, computed once: distill takes it before any
    model loads (a share that holds out nothing or leaves no fit image fails there) and build_rows uses it."""
    return [split_images(len(source), holdout, seed, what=repr(source.spec)) for source in sources]


def build_rows(teacher: VLM, pixel_encoder, sources: list[DataSource], want_texts: bool, runtime: str,
               progress: bool, views: int = 1, recipe: Augment | None = None, holdout: float = 0.0,
               seed: int = 0, teacher_pixels=None, splits: list[Split] | None = None) -> Prepared:
    """Embed the `views` views of every source's images with the teacher and cache the student's pixels of
    the very same views (one view: the images as they are); split each source's images into fit and
    held out (`splits`, else split_sources(sources, holdout, seed): by image, every view of a fit image
    trains, the plain view of a held-out image scores); align the rows valid in both caches. With
    `teacher_pixels` (a PixelEncoder of the teacher's transform, for mixup) the teacher's own pixels of
    the fit views are cached too."""
    pixels, positions, targets, text_rows, entries, held_pix, held_tch = [], [], [], [], [], [], []
    tpix_caches, tpix_where = [], []
    splits = split_sources(sources, holdout, seed) if splits is None else splits
    if len(splits) != len(sources):
        raise ValueError(f"build_rows got {len(splits)} splits for {len(sources)} sources")
    for source, split in zip(sources, splits):
        viewed = views_of(source, views, recipe)
        tch = embed(teacher, viewed, runtime=runtime, progress=progress, role="teacher")
        if tch.dim != teacher.dim:
            raise CacheMismatch(f"feature cache {tch.path} holds {tch.dim}-d features but the teacher "
                                f"{teacher.spec} gives {teacher.dim}-d: re-embed with overwrite")
        pix = embed(pixel_encoder, viewed, runtime="torch", dtype=pixel_encoder.dtype,
                    shard_rows=PIXEL_SHARD_ROWS, progress=progress, role="student pixels")
        valid = np.intersect1d(tch.index, pix.index)  # view rows decoded by both
        if teacher_pixels is not None:
            tpix = embed(teacher_pixels, viewed, runtime="torch", dtype=teacher_pixels.dtype,
                         shard_rows=PIXEL_SHARD_ROWS // 16, progress=progress, role="teacher pixels")
            valid = np.intersect1d(valid, tpix.index)
        fit_rows, held_rows = split.view_rows(views)
        fit_rows = drop_mixed_with(fit_rows, split.held, recipe or Augment(), len(source), views)  # none shows a held image
        common, held = np.intersect1d(valid, fit_rows), np.intersect1d(valid, held_rows)
        if len(common) < 2:
            raise DataError(f"{source.spec!r} has {len(common)} usable fit image view(s); distillation needs at least 2")
        targets.append(torch.from_numpy(tch.gather(np.searchsorted(tch.index, common))))  # [n, d]
        pixels.append(pix)
        positions.append(np.searchsorted(pix.index, common))
        if teacher_pixels is not None:
            tpix_caches.append(tpix)
            tpix_where.append(np.searchsorted(tpix.index, common))
        if len(held):
            held_tch.append(torch.from_numpy(tch.gather(np.searchsorted(tch.index, held))))  # [h, d]
            held_pix.append(torch.from_numpy(pix.gather(np.searchsorted(pix.index, held), dtype=None)))  # [h, 3HW]
        if want_texts:
            text_rows.extend(_texts(viewed, common))
        entries.append({"spec": source.spec, "fingerprint": source.fingerprint(), "rows": len(source),
                        "views": views, "images_fit": len(split.fit), "images_held_out": len(split.held),
                        "rows_used": len(common), "held_out_used": len(held)})
    unique = list(dict.fromkeys(text_rows))
    ids = None
    if want_texts:
        lookup = {t: i for i, t in enumerate(unique)}
        ids = np.array([lookup[t] for t in text_rows], dtype=np.int64)
    rows = Rows(pixels, positions, torch.cat(targets), ids, pixel_encoder.shape,
                None if teacher_pixels is None else (tpix_caches, tpix_where, teacher_pixels.shape))
    if holdout > 0 and not held_pix:
        raise DataError(f"--holdout {holdout:g} holds out no usable image of {', '.join(e['spec'] for e in entries)}")
    held_images = None
    if held_pix:
        held_images = torch.cat(held_pix).view(-1, *pixel_encoder.shape)  # [h, 3, H, W]
        held_images = held_images if pixel_encoder.dtype == "uint8" else held_images.float()
    return Prepared(rows, held_images, torch.cat(held_tch) if held_tch else None, unique, entries)
