"""The `synthetic:` data source: images made from prompts (class names x context phrases), for `distill`.

Popp, Metzen & Hein (2024) distil a VLM's image tower into a small student on synthetic images. Two
renderers make them: `clipart` (default, offline, fast) composites a clip art whose path words match
the class onto a random background with random scale, rotation, flip and colour jitter, styled by the
context phrase; `diffusers` runs a text-to-image pipeline once over every prompt and keeps the PNGs
under $ZEROSHIFT_HOME/synthetic. Row i is deterministic for (spec, i) in any process.

Spec: `synthetic:classes=fashion-mnist,n=2000,seed=0,size=128` (options in `create`).
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .. import paths
from ..errors import DataError, MissingBackend, SpecError, ZeroshiftError, fetch_failed
from ..io import atomic_path, write_text
from .base import BadImage, DataSource
from .files import files_token, walk_images
from .images import decode_image, to_rgb

CLIPART_VERSION = "clipart-1"  # bump whenever the clip-art renderer draws differently
DIFFUSERS_VERSION = "diffusers-1"  # bump whenever the diffusers renderer's use of the pipeline changes
CLIPART_MAX_PIXELS = 16_000_000  # clip art above this is skipped, not decoded (PNGs have no reduced decode)
CACHE_BYTES = 128 << 20  # decoded clip art kept per process
BACKGROUND_POOL = 64  # clip arts that backgrounds and scene clutter are drawn from (cache friendly)

DEFAULT_CONTEXTS: tuple[str, ...] = (
    "a photo of a {c}.",
    "a close-up photo of a {c}.",
    "a photo of a small {c}.",
    "a photo of a large {c}.",
    "a black and white photo of a {c}.",
    "a {c} on a plain background.",
    "a {c} in a scene.",
    "a blurry photo of a {c}.",
    "a bright photo of a {c}.",
    "a dark photo of a {c}.",
    "a cropped photo of a {c}.",
    "a drawing of a {c}.",
)

_DEFAULTS: dict[str, str] = {
    "classes": "openclipart", "contexts": "default", "n": "1000", "seed": "0", "size": "128",
    "renderer": "clipart", "clipart": "openclipart", "pipeline": "", "steps": "20", "guidance": "7.5",
    "batch": "8",
}
_CLIPART_ONLY = ("clipart",)
_DIFFUSERS_ONLY = ("pipeline", "steps", "guidance", "batch")
_STOP = frozenset({"a", "an", "the", "of", "and", "or", "with", "in", "on", "for", "to", "at", "by"})


# ---------------------------------------------------------------------------------------- options

def _int(opts: dict[str, str], key: str, low: int) -> int:
    value = opts[key]
    if not re.fullmatch(r"[+-]?\d+", value.strip()) or int(value) < low:
        raise SpecError(f"synthetic: {key} must be an integer >= {low}, got {key}={value!r}")
    return int(value)


def _float(opts: dict[str, str], key: str, low: float) -> float:
    try:
        value = float(opts[key])
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < low:
        raise SpecError(f"synthetic: {key} must be a number >= {low}, got {key}={opts[key]!r}")
    return value


def parse_options(arg: str) -> dict[str, Any]:
    """The option string after `synthetic:` -> typed options with defaults filled in; SpecError names a bad key."""
    given: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in _DEFAULTS:
            raise SpecError(f"synthetic: unknown option {key!r}; options are {', '.join(_DEFAULTS)}")
        if not eq or not value.strip():
            raise SpecError(f"synthetic: option {key} needs a value, e.g. {key}={_DEFAULTS[key] or 'PATH'}")
        if key in given:
            raise SpecError(f"synthetic: option {key} is given twice")
        given[key] = value.strip()
    opts: dict[str, Any] = {**_DEFAULTS, **given}
    renderer = opts["renderer"]
    if renderer not in ("clipart", "diffusers"):
        raise SpecError(f"synthetic: renderer must be clipart or diffusers, got renderer={renderer!r}")
    wrong = [k for k in (_DIFFUSERS_ONLY if renderer == "clipart" else _CLIPART_ONLY) if k in given]
    if wrong:
        raise SpecError(f"synthetic: option {wrong[0]} does not apply to renderer={renderer}")
    if renderer == "diffusers" and not opts["pipeline"]:
        raise SpecError("synthetic: renderer=diffusers needs pipeline=PATH (a folder saved by save_pretrained)")
    opts.update(n=_int(opts, "n", 1), seed=_int(opts, "seed", 0), size=_int(opts, "size", 8),
                steps=_int(opts, "steps", 1), batch=_int(opts, "batch", 1),
                guidance=_float(opts, "guidance", 0.0))
    return opts


def _lines(path: Path, what: str) -> list[str]:
    """Non-blank lines of a text file that are not `#` comments."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"synthetic: cannot read the {what} file {path} ({e})") from e
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def resolve_classes(value: str) -> tuple[list[str], str]:
    """classes=NAME_OR_FILE[+NAME_OR_FILE...] -> (class names, canonical value): text files (one name a
    line) or data specs, their names joined in order (a name in several counts once)."""
    if "+" in value and not Path(value).expanduser().is_file():
        parts = [resolve_classes(part) for part in value.split("+") if part]
        return list(dict.fromkeys(n for names, _ in parts for n in names)), "+".join(c for _, c in parts)
    from .. import specs

    path = Path(value).expanduser()
    if path.is_file():
        names, canonical = _lines(path, "classes"), str(path.resolve())
    else:
        if re.split(r"[:\[]", value, maxsplit=1)[0] not in specs.DATA_SCHEMES:
            raise SpecError(f"synthetic: classes={value} is neither an existing file nor a data spec; give a "
                            f"text file with one class name per line or a spec such as classes=fashion-mnist")
        names, canonical = list(specs.dataset(value).classes or []), value
    names = list(dict.fromkeys(names))  # duplicates would make labels ambiguous
    if not names:
        raise DataError(f"empty synthetic prompt set: classes={value} gives no class names")
    return names, canonical


def resolve_contexts(value: str) -> tuple[list[str], str]:
    """contexts=default|FILE -> (context phrases, each with {c}; canonical value)."""
    if value == "default":
        return list(DEFAULT_CONTEXTS), value
    path = Path(value).expanduser()
    if not path.is_file():
        raise SpecError(f"synthetic: contexts must be 'default' or an existing file, got contexts={value}")
    phrases = list(dict.fromkeys(_lines(path, "contexts")))
    if not phrases:
        raise DataError(f"empty synthetic prompt set: the contexts file {path} holds no phrase")
    bad = next((p for p in phrases if "{c}" not in p), None)
    if bad is not None:
        raise DataError(f"empty synthetic prompt set: context {bad!r} in {path} has no {{c}} for the class name")
    return phrases, str(path.resolve())


def prompt(context: str, name: str) -> str:
    """A context phrase with the class name put in for {c} ('a {c}' becomes 'an {c}' before a vowel)."""
    if name[:1].lower() in "aeiou":
        context = re.sub(r"\b([Aa]) \{c\}", r"\1n {c}", context)
    return context.replace("{c}", name)


def balanced_order(n_classes: int, n_contexts: int, seed: int) -> np.ndarray:
    """A seeded shuffle of all (class, context) pairs [C*K, 2] in K rounds that each hold every class
    once, so any prefix covers the classes evenly and each class cycles through all its contexts."""
    rng = np.random.default_rng([seed, 0x5EED])
    contexts = np.stack([rng.permutation(n_contexts) for _ in range(n_classes)])  # [C, K]
    rounds = [np.stack([order, contexts[order, r]], axis=1)  # [C, 2]
              for r, order in enumerate(rng.permutation(n_classes) for _ in range(n_contexts))]
    return np.concatenate(rounds)  # [C*K, 2]


# ------------------------------------------------------------------------------------------ style

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


# --------------------------------------------------------------------------------- clip-art words

def _forms(word: str) -> set[str]:
    """A word and its singular guesses ('bags' -> bag, 'boxes' -> box): plural-tolerant matching."""
    out = {word}
    if len(word) > 3 and word.endswith("es"):
        out.add(word[:-2])
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])
    return out


def path_words(relpath: str) -> set[str]:
    """Lower-case words of a clip-art path's folders and file name (OpenClipart counters and cut-off words dropped)."""
    from .catalogue import clipart_words

    parts = relpath.split("/")
    words = set(clipart_words(Path(parts[-1]).stem).split())
    for folder in parts[:-1]:
        words.update(clipart_words(folder + "_0").split())
    return words


def class_words(name: str) -> list[list[str]]:
    """Content words of a class name, per '/'-separated alternative ('t-shirt/top' -> [['shirt'], ['top']])."""
    out = []
    for alt in name.lower().split("/"):
        words = [w for w in re.split(r"[^a-z]+", alt) if len(w) > 1 and w not in _STOP]
        if words:
            out.append(words)
    return out


def match_classes(classes: Sequence[str], relpaths: Sequence[str]) -> list[np.ndarray | None]:
    """Per class, indices of clip arts whose path words hold all of the class's words (any alternative,
    first that matches), else its head (last) word; None where nothing matches."""
    index: dict[str, set[int]] = {}
    for k, rel in enumerate(relpaths):
        for w in path_words(rel):
            for f in _forms(w):
                index.setdefault(f, set()).add(k)

    def files(word: str) -> set[int]:
        return set().union(*(index.get(f, set()) for f in _forms(word)))

    out: list[np.ndarray | None] = []
    for name in classes:
        alts, found = class_words(name), set()
        for words in alts:
            found = set.intersection(*(files(w) for w in words))
            if found:
                break
        if not found:
            for words in alts:
                found = files(words[-1])
                if found:
                    break
        out.append(np.array(sorted(found), dtype=np.int64) if found else None)
    return out


# ---------------------------------------------------------------------------------- clip-art cache

_CACHE: OrderedDict[tuple[str, int], Image.Image | None] = OrderedDict()
_CACHE_USED = [0]
_CACHE_LOCK = threading.Lock()


def _decode_clipart(path: Path, max_side: int, max_pixels: int) -> Image.Image | None:
    """An RGBA clip art cropped to its opaque part, longest side <= max_side; None when unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.width * im.height > max_pixels or im.width < 1 or im.height < 1:
                    return None
                im.load()
                if im.mode not in ("RGBA", "RGB", "LA", "L", "P", "PA", "1"):
                    im = to_rgb(im)
                im = im.convert("RGBA")
        bbox = im.getchannel("A").getbbox()
        if bbox is None:
            return None  # fully transparent
        im = im.crop(bbox)
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return im
    except Exception:  # noqa: BLE001 - corrupt or truncated files: skipped by the caller, never fatal
        return None


def load_clipart(path: Path, max_side: int, max_pixels: int = CLIPART_MAX_PIXELS) -> Image.Image | None:
    """`_decode_clipart` through a per-process LRU cache bounded by CACHE_BYTES."""
    key = (str(path), max_side)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    im = _decode_clipart(path, max_side, max_pixels)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = im
            _CACHE_USED[0] += _bytes(im)
        while _CACHE_USED[0] > CACHE_BYTES and len(_CACHE) > 1:
            _CACHE_USED[0] -= _bytes(_CACHE.popitem(last=False)[1])
    return im


def _bytes(im: Image.Image | None) -> int:
    return 64 + (im.width * im.height * 4 if im is not None else 0)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _hue_saturation(angle: float, saturation: float) -> np.ndarray:
    """[3, 3] colour matrix: rotate hue by `angle` radians and scale saturation (chroma in YIQ space)."""
    c, s = np.cos(angle) * saturation, np.sin(angle) * saturation
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ).astype(np.float32)


# ------------------------------------------------------------------------------------ the source

class SyntheticSource(DataSource):
    """Rows made from prompts; metadata (classes, labels, captions, keys) needs no rendering."""

    renderer = ""

    def __init__(self, opts: dict[str, Any], classes: list[str], contexts: list[str]) -> None:
        self.opts = opts
        self.n, self.seed, self.size = opts["n"], opts["seed"], opts["size"]
        self.classes = classes
        self.contexts = contexts
        pairs = balanced_order(len(classes), len(contexts), self.seed)  # [C*K, 2]
        rows = pairs[np.arange(self.n) % len(pairs)]  # [n, 2] (class, context)
        self.labels = rows[:, 0].astype(np.int64)
        self.context_index = rows[:, 1].astype(np.int64)
        self.prompts = [prompt(contexts[k], classes[c]) for c, k in pairs]
        self.captions = [self.prompts[i % len(pairs)] for i in range(self.n)]
        self.keys = [f"{i:06d}" for i in range(self.n)]
        self.spec = "synthetic:" + ",".join(f"{k}={opts[k]}" for k in self._spec_keys())
        self._token: str | None = None

    def _spec_keys(self) -> tuple[str, ...]:
        return ("classes", "contexts", "n", "seed", "size", "renderer")

    @abc.abstractmethod
    def _identity(self) -> str:
        """What the renderer draws from (its version, the clip-art set or the pipeline)."""

    def _content_token(self) -> str:
        if self._token is None:
            h = hashlib.sha1(self._identity().encode())
            h.update("\n".join(self.captions).encode())
            h.update(self.labels.tobytes())
            self._token = h.hexdigest()
        return self._token

    def describe(self) -> dict:
        return {**super().describe(), "renderer": self.renderer}


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

    def describe(self) -> dict:
        return {**super().describe(), "clipart_files": len(self.relpaths),
                "unmatched_classes": list(self.unmatched_classes)}

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


# ------------------------------------------------------------------------------------- diffusers

def _pipeline_ref(value: str) -> tuple[str, bool]:
    """pipeline=PATH|HUB_ID -> (absolute folder or hub id, whether it is a local folder)."""
    local = Path(value).expanduser()
    if local.is_dir():
        return str(local.resolve()), True
    return value, False


def _folder_token(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return files_token(folder, [p.relative_to(folder).as_posix() for p in files])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence diffusers' and transformers' loading logs and progress bars for a while."""
    libraries = []
    for name in ("diffusers", "transformers"):
        try:
            libraries.append(importlib.import_module(name).utils.logging)
        except ImportError:
            continue
    saved = [(lg.get_verbosity(), lg.is_progress_bar_enabled()) for lg in libraries]
    for lg in libraries:
        lg.set_verbosity_error()
        lg.disable_progress_bar()
    try:
        yield
    finally:
        for lg, (verbosity, bars) in zip(libraries, saved):
            lg.set_verbosity(verbosity)
            if bars:
                lg.enable_progress_bar()


class DiffusersSource(SyntheticSource):
    """A text-to-image pipeline's renders of every row, made once (resumably) and read back as PNGs."""

    renderer = "diffusers"

    def __init__(self, opts: dict[str, Any], classes: list[str], contexts: list[str]) -> None:
        opts = {**opts}
        opts["pipeline"], self.local = _pipeline_ref(opts["pipeline"])
        super().__init__(opts, classes, contexts)
        self.pipeline, self.steps, self.guidance, self.batch = (
            opts["pipeline"], opts["steps"], opts["guidance"], opts["batch"])
        self.rendered = 0  # images rendered by the last `render` call

    def _spec_keys(self) -> tuple[str, ...]:
        return super()._spec_keys() + ("pipeline", "steps", "guidance", "batch")

    def _identity(self) -> str:
        pipe = _folder_token(Path(self.pipeline)) if self.local else self.pipeline
        return f"{DIFFUSERS_VERSION}|{pipe}"

    @property
    def folder(self) -> Path:
        """Where the renders live: $ZEROSHIFT_HOME/synthetic/<spec slug>-<fingerprint>."""
        return paths.home() / "synthetic" / f"{paths.slug(self.spec)}-{self.fingerprint()}"

    def file(self, i: int) -> Path:
        return self.folder / f"{self.keys[i]}.png"

    def _load_pipeline(self) -> Any:
        try:
            import diffusers
            import torch
        except ImportError as e:
            raise MissingBackend(f"synthetic:renderer=diffusers needs diffusers ({e}): pip install diffusers") from e
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        try:
            with _quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = diffusers.DiffusionPipeline.from_pretrained(self.pipeline, torch_dtype=dtype)
        except Exception as e:
            if self.local:
                raise DataError(f"synthetic: cannot load a diffusion pipeline from {self.pipeline}: "
                                f"{_first_line(e)}") from e
            raise fetch_failed(f"synthetic pipeline={self.pipeline}",
                               "pipeline=PATH (a folder saved by DiffusionPipeline.save_pretrained)", e) from e
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def render(self, progress: bool = True) -> int:
        """Render every row that has no PNG yet (whole batches, so a resumed run draws the same images);
        returns how many were written."""
        import torch
        from tqdm.auto import tqdm

        folder = self.folder
        missing = [i for i in range(self.n) if not self.file(i).is_file()]
        self.rendered = 0
        if not missing:
            return 0
        pipe = self._load_pipeline()
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp-*"):  # temp files of a killed run
            if time.time() - stale.stat().st_mtime > 600:
                stale.unlink(missing_ok=True)
        write_text(folder / "spec.json", json.dumps(
            {"spec": self.spec, "fingerprint": self.fingerprint(), "prompts": self.captions}, indent=1))
        bar = tqdm(total=len(missing), unit="img", desc="synthetic", disable=not progress, dynamic_ncols=True)
        try:
            for b in sorted({i // self.batch for i in missing}):
                rows = range(b * self.batch, min((b + 1) * self.batch, self.n))
                seed = int(np.random.SeedSequence([self.seed, b]).generate_state(1)[0])
                generator = torch.Generator("cpu").manual_seed(seed)
                try:
                    with torch.inference_mode():
                        images = pipe(prompt=[self.captions[i] for i in rows], num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, generator=generator, output_type="pil").images
                except Exception as e:
                    raise ZeroshiftError(f"synthetic: the diffusion pipeline failed on rows {rows.start}-"
                                         f"{rows.stop - 1}: {_first_line(e)}") from e
                for i, im in zip(rows, images):
                    if not self.file(i).is_file():
                        _atomic_png(self.file(i), _square(to_rgb(im), self.size))
                        self.rendered += 1
                        bar.update(1)
        finally:
            bar.close()
        return self.rendered

    def load_image(self, i: int) -> Image.Image:
        path = self.file(int(i))
        if not path.is_file():
            raise BadImage(f"{path}: not rendered; open {self.spec} again to render the missing images")
        im = decode_image(path)
        return im if im.size == (self.size, self.size) else _square(im, self.size)


def _square(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to size x size."""
    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return im.resize((size, size), Image.Resampling.BICUBIC) if side != size else im


def _atomic_png(path: Path, im: Image.Image) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp, "PNG")


# ------------------------------------------------------------------------------------- create

def _clipart_set(value: str) -> tuple[Path, list[str], str]:
    """clipart=DIR|openclipart -> (root, relative image paths, canonical value)."""
    from .catalogue import OPENCLIPART_DIR
    from .fetch import dataset_dir, is_fetched

    if value == "openclipart":
        if not is_fetched("openclipart"):
            raise DataError("synthetic: the clipart renderer needs clip art: run `zeroshift data fetch openclipart` "
                            "or pass clipart=DIR")
        root, canonical = dataset_dir("openclipart") / OPENCLIPART_DIR, value
    else:
        root = Path(value).expanduser()
        if not root.is_dir():
            raise DataError(f"synthetic: clipart={value} is not a folder; give a folder of <category>/<name>.png")
        root = root.resolve()
        canonical = str(root)
    files = walk_images(root)
    if not files:
        raise DataError(f"synthetic: no clip-art images under {root}")
    return root, [f.relative_to(root).as_posix() for f in files], canonical


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
        root, relpaths, opts["clipart"] = _clipart_set(opts["clipart"])  # first: says what to fetch
    contexts, opts["contexts"] = resolve_contexts(opts["contexts"])
    classes, opts["classes"] = resolve_classes(opts["classes"])
    if opts["renderer"] == "clipart":
        return ClipartSource(opts, classes, contexts, root, relpaths, max_pixels)
    source = DiffusersSource(opts, classes, contexts)
    source.render(progress)
    return source
