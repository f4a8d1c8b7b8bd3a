"""Seeded augmented views of images: the recipe (`Augment`), one view (`make_view`), and `ViewSource`,
a data source whose rows are the K views of every image of another source.

A view cache (DESIGN 3.2) stores a teacher's embedding of each exact view, beside what the student or
source encoder needs to see the same view; both are ordinary feature caches of one `ViewSource`, so
they share rows, order, fingerprint, sharding, checksums and resume. View v of image i depends only on
(recipe, i, v): its random numbers come from a generator seeded by (recipe seed, i, v), and every image
is decoded at a bound fixed by the recipe, never by the caller, so the teacher's and the student's
caches are built from the very same PIL image whatever model, rank or worker asks for it.

View 0 is the image itself (composited on white where it has transparency, resized and centre-cropped
to the canvas): the unaugmented view, which held-out scoring uses. Views 1..K-1 are random resized crops
(area fraction in `crop`, aspect ratio 3/4..4/3), flipped with probability `flip`, with brightness,
contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter] in a random order; an image
with an alpha channel (Tux Paint cut-outs, clip art) is first composited on a random background (a
plain colour, a two-colour gradient or coarse noise) when `bg=random`, on white when `bg=white`.
With `mix=P` a share P of those views is blended with a view of another image of the source, the image
itself weighted in [0.5, 1]: mixup (Beyer et al.'s function matching) with a cached target, since the
teacher embeds the very blend. The partner is a function of (recipe, i, v) too (`ViewSource.partner`),
so a held-out split can drop the fit views that would show a held-out image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image, ImageEnhance

from ..errors import SpecError
from .base import DataSource, Subset, load_row

BACKGROUNDS = ("random", "white")
RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random crop, as torchvision's RandomResizedCrop
EXAMPLE = "crop=0.35-1,flip=0.5,jitter=0.4,bg=random,mix=0.5"
OLD_MODES = {"flip", "light"}  # distill's student-side --augment values before view recipes


@dataclass(frozen=True)
class Augment:
    """A view recipe. `crop`: area fraction range of the random crop; `flip`: probability of a horizontal
    flip; `jitter`: strength of the colour jitter; `bg`: background under transparent pixels; `size`: the
    side of the square canvas every view is drawn at; `seed`: the views' seed; `mix`: the share of views
    blended with a view of another image (0: none)."""

    crop: tuple[float, float] = (0.35, 1.0)
    flip: float = 0.5
    jitter: float = 0.4
    bg: str = "random"
    size: int = 256
    seed: int = 0
    mix: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.crop
        problems = [
            (not 0 < lo <= hi <= 1, f"crop={_num(lo)}-{_num(hi)}: an area fraction range A-B with 0 < A <= B <= 1"),
            (not 0 <= self.flip <= 1, f"flip={_num(self.flip)}: a probability in [0, 1]"),
            (not 0 <= self.jitter < 1, f"jitter={_num(self.jitter)}: a strength in [0, 1)"),
            (self.bg not in BACKGROUNDS, f"bg={self.bg}: one of {', '.join(BACKGROUNDS)}"),
            (not 16 <= self.size <= 1024, f"size={self.size}: a canvas side from 16 to 1024 pixels"),
            (self.seed < 0, f"seed={self.seed}: a whole number of 0 or more"),
            (not 0 <= self.mix <= 1, f"mix={_num(self.mix)}: a share of views in [0, 1]"),
        ]
        for bad, what in problems:
            if bad:
                raise SpecError(f"augmentation value out of range, {what}")

    def canonical(self) -> str:
        """Every setting, in a fixed order and spelling: what fingerprints and manifests record (`mix` only
        when on, so the caches made before it existed keep their names)."""
        return (f"crop={_num(self.crop[0])}-{_num(self.crop[1])},flip={_num(self.flip)},jitter={_num(self.jitter)},"
                f"bg={self.bg},size={self.size},seed={self.seed}" + (f",mix={_num(self.mix)}" if self.mix else ""))

    @property
    def identity(self) -> bool:
        """True when every view equals the plain view (no crop, flip or jitter, white backgrounds)."""
        return self.crop == (1.0, 1.0) and self.flip == 0 and self.jitter == 0 and self.bg == "white" and not self.mix


def _num(x: float) -> str:
    return f"{x:g}"


NONE = Augment(crop=(1.0, 1.0), flip=0.0, jitter=0.0, bg="white")


def parse_augment(spec: str | Augment | None, option: str = "--augment") -> Augment:
    """A recipe from `name=value,...` (unnamed settings keep their defaults), 'default' or 'none'
    (every view the plain image); one-line SpecError naming the option for anything else."""
    if isinstance(spec, Augment):
        return spec
    text = (spec or "default").strip()
    if text in ("", "default"):
        return Augment()
    if text == "none":
        return NONE
    if text in OLD_MODES:
        raise SpecError(f"{option} {text} was distill's student-side augmentation, now --student-augment {text}; "
                        f"{option} takes a view recipe such as {EXAMPLE}")
    names = [f.name for f in fields(Augment)]
    values: dict = {}
    for part in text.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if name not in names:
            raise SpecError(f"unknown augmentation {name!r} in {option} {text!r}; known: {', '.join(names)} "
                            f"(e.g. {EXAMPLE})")
        if not eq or not value:
            raise SpecError(f"{option} {text!r}: {name} needs a value, as {name}=...")
        try:
            if name == "crop":
                lo, dash, hi = value.partition("-")
                values[name] = (float(lo), float(hi if dash else lo))
            elif name in ("size", "seed"):
                values[name] = int(value)
            elif name == "bg":
                values[name] = value
            else:
                values[name] = float(value)
        except ValueError:
            raise SpecError(f"{option} {text!r}: {name}={value} is not a number") from None
        if name in ("flip", "jitter", "mix") and not math.isfinite(values[name]):
            raise SpecError(f"{option} {text!r}: {name}={value} is not a finite number")
    try:
        return replace(Augment(), **values)
    except SpecError as e:
        raise SpecError(f"{option} {text!r}: {e}") from None


# ---------------------------------------------------------------- one view
def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random RGB background of `size` (w, h): a plain colour, a two-colour gradient or coarse noise."""
    w, h = size
    kind = rng.integers(3)
    if kind == 0:
        return Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    if kind == 1:
        a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
        t = np.linspace(0.0, 1.0, h if rng.random() < 0.5 else w, dtype=np.float32)
        ramp = a + t[:, None] * (b - a)  # [L, 3]
        grid = np.broadcast_to(ramp[:, None] if len(t) == h else ramp[None], (h, w, 3))
        return Image.fromarray(np.ascontiguousarray(grid).astype(np.uint8))
    coarse = rng.integers(0, 256, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def _flatten(image: Image.Image, rng: np.random.Generator | None) -> Image.Image:
    """RGB as it is; RGBA composited on white (rng None) or on a random background."""
    if image.mode == "RGB":
        return image
    image = image.convert("RGBA")
    canvas = Image.new("RGB", image.size, (255, 255, 255)) if rng is None else _background(rng, image.size)
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


def _crop_box(rng: np.random.Generator, w: int, h: int, scale: tuple[float, float]) -> tuple[float, ...]:
    """torchvision's RandomResizedCrop box (x0, y0, x1, y1), drawn from `rng`: area fraction in `scale`,
    log-uniform aspect ratio in RATIO, ten tries, else the largest centred box within the ratios."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (x0, y0, x0 + cw, y0 + ch)
    ratio = min(max(w / h, RATIO[0]), RATIO[1])
    cw, ch = (w, w / ratio) if w / h < ratio else (h * ratio, h) if w / h > ratio else (w, h)
    return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)


def plain_view(image: Image.Image, size: int) -> Image.Image:
    """The unaugmented view: on white, shorter side resized to `size`, centre-cropped square. [size, size] RGB"""
    image = _flatten(image, None)
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def make_view(image: Image.Image, recipe: Augment, rng: np.random.Generator) -> Image.Image:
    """One augmented view of `image` (RGB, or RGBA with transparency) drawn from `rng`. [size, size] RGB"""
    image = _flatten(image, rng if recipe.bg == "random" else None)
    box = _crop_box(rng, *image.size, recipe.crop)
    view = image.resize((recipe.size, recipe.size), Image.Resampling.BICUBIC, box=box)
    if rng.random() < recipe.flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if recipe.jitter > 0:
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        factors = rng.uniform(1 - recipe.jitter, 1 + recipe.jitter, 3)
        for k in rng.permutation(3):
            view = enhancers[k](view).enhance(float(factors[k]))
    return view


# ---------------------------------------------------------------- mixed views
def _mix_draw(recipe: Augment, images: int, image_row: int, v: int) -> tuple[int, float, np.random.Generator] | None:
    """(partner image, the image's own weight, the partner view's generator) of view v of image_row among
    `images`, None when it is not mixed: a stream of its own, so `mix` leaves unmixed views as they were."""
    if v == 0 or not recipe.mix or images < 2:
        return None
    rng = np.random.default_rng([recipe.seed, image_row, v, 1])
    if rng.random() >= recipe.mix:
        return None
    partner = int(rng.integers(images - 1))
    return partner + (partner >= image_row), float(rng.uniform(0.5, 1.0)), rng


def mix_partners(recipe: Augment, images: int, views: int, rows: np.ndarray) -> np.ndarray:
    """The image blended into each view row of `rows` (`views` adjacent rows per image, of `images`), -1
    for the views shown on their own: computed from the recipe alone, no image is read. [len(rows)]"""
    draws = (_mix_draw(recipe, images, *divmod(int(r), views)) for r in np.asarray(rows).reshape(-1))
    return np.array([-1 if d is None else d[0] for d in draws], dtype=np.int64)


def drop_mixed_with(rows: np.ndarray, held: np.ndarray, recipe: Augment, images: int, views: int) -> np.ndarray:
    """View rows `rows` less the views that blend in one of the images `held` (a held-out split's), so that
    no fit view shows a held-out image; `rows` as they are when the recipe mixes nothing."""
    if not recipe.mix or views < 2 or len(held) == 0:
        return rows
    return rows[~np.isin(mix_partners(recipe, images, views, rows), held)]


# ---------------------------------------------------------------- the source
def load_with_alpha(source: DataSource, i: int, max_side: int) -> Image.Image:
    """Row i of `source` decoded within `max_side`, RGBA where a file has transparency (files and row
    subsets of them), else RGB as the source gives it."""
    from .files import FileSource
    from .images import decode_image

    base, row = source, i
    while isinstance(base, Subset):
        base, row = base.source, int(base.indices[row])
    if isinstance(base, FileSource) and row not in base.bad:
        return decode_image(base.files[row], min(max_side, base.max_side or max_side), base.max_pixels, alpha=True)
    return load_row(source, i, max_side)


class ViewSource(DataSource):
    """The K views of every image of `source`: row r is view r % K of image r // K (the views of an image
    are adjacent rows), keyed `KEY#v`, with the image's label and caption (a mixed view keeps its own
    image's). View 0 is the plain view."""

    def __init__(self, source: DataSource, views: int, recipe: Augment) -> None:
        if views < 1:
            raise SpecError(f"--views must be at least 1; got {views}")
        self.source, self.views, self.recipe = source, int(views), recipe
        self.spec = f"{source.spec}@views={views}:{recipe.canonical()}"
        self.classes = source.classes
        self.keys = [f"{k}#{v}" for k in source.keys for v in range(views)]
        self.labels = None if source.labels is None else np.repeat(np.asarray(source.labels), views)
        self.captions = None if source.captions is None else [c for c in source.captions for _ in range(views)]
        self._last: tuple[int, Image.Image] | None = None  # the views of one image are made in a row

    def image(self, rows: np.ndarray | int) -> np.ndarray | int:
        """The image (row of `source`) of view rows `rows`."""
        return rows // self.views

    def view(self, rows: np.ndarray | int) -> np.ndarray | int:
        """The view number of view rows `rows` (0: the plain view)."""
        return rows % self.views

    def partner(self, rows: np.ndarray) -> np.ndarray:
        """The image blended into each view row of `rows`, -1 for the views shown on their own. [len(rows)]"""
        return mix_partners(self.recipe, len(self.source), self.views, rows)

    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        """View i at the recipe's canvas; `max_side` is ignored: every caller gets the same pixels."""
        image_row, v = divmod(int(i), self.views)
        bound = 2 * self.recipe.size
        if self._last is None or self._last[0] != image_row:
            self._last = None  # a bad image raises below and is not kept
            self._last = (image_row, load_with_alpha(self.source, image_row, bound))
        image = self._last[1]
        if v == 0:
            return plain_view(image, self.recipe.size)
        view = make_view(image, self.recipe, np.random.default_rng([self.recipe.seed, image_row, v]))
        mix = _mix_draw(self.recipe, len(self.source), image_row, v)
        if mix is None:
            return view
        partner, weight, rng = mix
        other = make_view(load_with_alpha(self.source, partner, bound), self.recipe, rng)
        return Image.blend(other, view, weight)  # weight x the view + (1 - weight) x the partner's

    def _content_token(self) -> str:
        return self.source.fingerprint()


def views_of(source: DataSource, views: int, recipe: Augment | str | None = None) -> DataSource:
    """`source` itself for one view (the images as they are, sharing the caches of plain embeds), else its
    ViewSource of `views` views per image drawn by `recipe`."""
    if views < 1:
        raise SpecError(f"--views must be at least 1; got {views}")
    return source if views == 1 else ViewSource(source, views, parse_augment(recipe))
