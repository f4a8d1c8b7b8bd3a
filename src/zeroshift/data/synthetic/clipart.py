"""The offline renderer: per row, a clip art matching the class composited on a random background, with
random scale, rotation, flip and colour jitter, styled by the row's context phrase."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ..base import BadImage
from ..files import files_token
from .base import SyntheticSource
from .clipart_files import CLIPART_MAX_PIXELS, load_clipart, match_classes

CLIPART_VERSION = "clipart-1"  # bump whenever the clip-art renderer draws differently
BACKGROUND_POOL = 64  # clip arts that backgrounds and scene clutter are drawn from (cache friendly)


# -------------------------------------------------------------------------------------------- style

@dataclass(frozen=True)
class Style:
    """How a context phrase shapes a clip-art render."""

    scale: tuple[float, float] = (0.3, 0.9)  # object's longest side, as a fraction of the image side
    gray: float = 0.1  # probability of a grayscale image
    background: str = "any"  # any | plain | white | scene
    blur: bool = False
    brightness: tuple[float, float] = (0.75, 1.25)
    jitter: bool = True  # contrast, saturation, hue


_STYLE_RULES: list[tuple[str, dict[str, Any]]] = [
    (r"close[- ]?up|\blarge\b|\bbig\b|\bcropped\b|\bhuge\b", {"scale": (0.75, 0.98)}),
    (r"\bsmall\b|\btiny\b|\blittle\b|far away|\bdistant\b", {"scale": (0.22, 0.42)}),
    (r"black and white|black-and-white|gr[ae]yscale|monochrome", {"gray": 1.0}),
    (r"\bplain\b|\bsimple background|\bisolated\b", {"background": "plain"}),
    (r"white background", {"background": "white"}),
    (r"\bscene\b|\bcluttered\b|\bbusy\b|\bstreet\b|\broom\b", {"background": "scene"}),
    (r"blurr|out of focus", {"blur": True}),
    (r"\bbright\b|\bsunny\b", {"brightness": (1.15, 1.45)}),
    (r"\bdark\b|low light|\bnight\b", {"brightness": (0.4, 0.7)}),
    (r"drawing|sketch|cartoon|clip ?art|illustration", {"background": "white", "jitter": False, "gray": 0.0}),
]


def style_of(context: str) -> Style:
    """The render style a context phrase asks for (close-up -> large, small -> small, black and white
    -> grayscale, plain -> solid background, ...); plain photos get the default."""
    text = context.replace("{c}", " ").lower()
    changes: dict[str, Any] = {}
    for pattern, change in _STYLE_RULES:
        if re.search(pattern, text):
            changes.update(change)
    return Style(**changes)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _hue_saturation(angle: float, saturation: float) -> np.ndarray:
    """[3, 3] colour matrix: rotate hue by `angle` radians and scale saturation (chroma in YIQ space)."""
    c, s = np.cos(angle) * saturation, np.sin(angle) * saturation
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ).astype(np.float32)


# --------------------------------------------------------------------------------------- the source

class ClipartSource(SyntheticSource):
    """The offline renderer: a matching clip art composited on a random background, per row."""

    renderer = "clipart"

    def __init__(self, opts: dict[str, Any], classes: list[str], contexts: list[str], root: Path,
                 relpaths: Sequence[str], max_pixels: int = CLIPART_MAX_PIXELS) -> None:
        super().__init__(opts, classes, contexts)
        self.root, self.relpaths, self.max_pixels = root, list(relpaths), max_pixels
        self.styles = [style_of(c) for c in contexts]
        matched = match_classes(classes, self.relpaths)
        self.unmatched_classes = [c for c, m in zip(classes, matched) if m is None]
        everything = np.arange(len(self.relpaths), dtype=np.int64)
        self.candidates = [everything if m is None else m for m in matched]  # per class: clip-art indices
        pool_rng = np.random.default_rng([self.seed, 0xBA6])
        self.background_pool = pool_rng.permutation(len(self.relpaths))[:BACKGROUND_POOL]

    def _spec_keys(self) -> tuple[str, ...]:
        return super()._spec_keys() + ("clipart",)

    def _identity(self) -> str:
        return f"{CLIPART_VERSION}|{files_token(self.root, self.relpaths)}"

    # -- pieces

    def _clipart(self, k: int) -> Image.Image | None:
        return load_clipart(self.root / self.relpaths[int(k)], 2 * self.size, self.max_pixels)

    def _pick(self, rng: np.random.Generator, label: int) -> Image.Image:
        """A usable clip art for the class; unreadable files are skipped for another draw."""
        for pool in (self.candidates[label], np.arange(len(self.relpaths))):
            for _ in range(8):
                im = self._clipart(pool[rng.integers(len(pool))])
                if im is not None:
                    return im
        raise BadImage(f"synthetic: no readable clip art found in 16 draws under {self.root}")

    def _background(self, rng: np.random.Generator, side: int, kind: str) -> Image.Image:
        if kind == "any":
            kind = ("solid", "gradient", "noise", "clipart")[rng.choice(4, p=[0.2, 0.3, 0.25, 0.25])]
        elif kind == "plain":
            kind = "solid"
        elif kind == "scene":
            kind = ("noise", "clipart")[rng.integers(2)]
        colour = rng.integers(0, 256, 3)
        if kind == "white":
            return Image.new("RGB", (side, side), tuple(int(v) for v in 235 + rng.integers(0, 21, 3)))
        if kind == "solid":
            return Image.new("RGB", (side, side), tuple(int(v) for v in colour))
        if kind == "gradient":
            angle = rng.uniform(0, 2 * np.pi)
            t = np.linspace(0.0, 1.0, side, dtype=np.float32)
            ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]  # [side, side]
            ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
            other = rng.integers(0, 256, 3).astype(np.float32)
            a = colour.astype(np.float32) + ramp[..., None] * (other - colour)  # [side, side, 3]
            return Image.fromarray(a.astype(np.uint8))
        if kind == "noise":
            cells = int(rng.integers(3, 9))
            small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)  # [k, k, 3]
            noise = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
            return Image.blend(noise, Image.new("RGB", (side, side), tuple(int(v) for v in colour)),
                               float(rng.uniform(0.0, 0.5)))
        # a faded crop of another clip art
        base = Image.new("RGB", (side, side), tuple(int(v) for v in colour))
        art = self._clipart(self.background_pool[rng.integers(len(self.background_pool))])
        if art is None:
            return base
        zoom = side * rng.uniform(1.0, 2.0) / min(art.size)
        art = art.resize((max(1, round(art.width * zoom)), max(1, round(art.height * zoom))),
                         Image.Resampling.BILINEAR)
        x = -int(rng.integers(0, max(1, art.width - side + 1)))
        y = -int(rng.integers(0, max(1, art.height - side + 1)))
        layer = base.copy()
        layer.paste(art, (x, y), art)
        return Image.blend(layer, base, float(rng.uniform(0.35, 0.7)))

    def _paste(self, canvas: Image.Image, art: Image.Image, rng: np.random.Generator, longest: float,
               centre: tuple[float, float]) -> None:
        """Scale `art` so its longest side is `longest` px, flip, rotate, and paste it centred at `centre`."""
        zoom = longest / max(art.size)
        art = art.resize((max(1, round(art.width * zoom)), max(1, round(art.height * zoom))),
                         Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            art = art.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        art = art.rotate(float(rng.uniform(-30, 30)), Image.Resampling.BILINEAR, expand=True)
        canvas.paste(art, (round(centre[0] - art.width / 2), round(centre[1] - art.height / 2)), art)

    def _jitter(self, im: Image.Image, rng: np.random.Generator, style: Style) -> Image.Image:
        """Brightness, contrast, saturation and hue (a rotation in YIQ space); sometimes grayscale."""
        a = np.asarray(im, dtype=np.float32)  # [S, S, 3]
        if style.jitter:
            a = a @ _hue_saturation(rng.uniform(-0.06, 0.06) * 2 * np.pi, rng.uniform(0.6, 1.4)).T  # [S, S, 3]
        a = a * rng.uniform(*style.brightness)
        grey = a @ _LUMA  # [S, S]
        if style.jitter:
            mean = float(grey.mean())
            contrast = rng.uniform(0.7, 1.3)
            a = (a - mean) * contrast + mean
            grey = (grey - mean) * contrast + mean
        if rng.random() < style.gray:
            a = np.repeat(grey[..., None], 3, axis=2)  # [S, S, 3]
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    def load_image(self, i: int) -> Image.Image:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} is outside synthetic's {self.n} rows")
        rng = np.random.default_rng([self.seed, i])
        style = self.styles[int(self.context_index[i])]
        size = self.size
        side = round(size * 1.2)  # canvas; a random size x size crop of it is the image
        canvas = self._background(rng, side, style.background)
        ox, oy = (int(v) for v in rng.integers(0, side - size + 1, 2))
        if style.background == "scene":  # clutter: a few small faded clip arts
            for _ in range(int(rng.integers(1, 4))):
                art = self._clipart(self.background_pool[rng.integers(len(self.background_pool))])
                if art is not None:
                    self._paste(canvas, art, rng, size * rng.uniform(0.15, 0.3),
                                tuple(rng.uniform(0, side, 2)))
        art = self._pick(rng, int(self.labels[i]))
        longest = size * rng.uniform(*style.scale)
        margin = min(longest, size) * 0.4  # the centre keeps most of the object inside the crop
        centre = (ox + rng.uniform(margin, size - margin), oy + rng.uniform(margin, size - margin))
        self._paste(canvas, art, rng, longest, centre)
        im = canvas.crop((ox, oy, ox + size, oy + size))
        if style.blur:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0) * size / 128))
        return self._jitter(im, rng, style)
