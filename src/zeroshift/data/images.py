"""Bounded, robust image decoding: any file or bytes -> an RGB PIL image, or BadImage.

Real collections are messy: 16-bit greys, palettes with transparency, CMYK JPEGs, EXIF rotations and
PNGs of hundreds of millions of pixels. `decode_image` handles the first kinds and bounds the last:
baseline JPEGs are decoded at reduced scale (`draft`) to the size the model needs; progressive JPEGs
(whose decoder holds every coefficient whatever the scale) and other formats larger than `max_pixels`
are refused before their pixels are read. Every failure is a `BadImage`, which loaders
count and list instead of dying.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from typing import IO, Iterator, Union

import numpy as np
from PIL import Image, JpegImagePlugin

from .base import BadImage, TooManyPixels

# Pillow warns above MAX_IMAGE_PIXELS (~89M) and refuses above twice that. An 89M-pixel RGBA PNG is
# ~360 MB decoded, a sane ceiling per image; pass a larger max_pixels (up to Pillow's hard limit) to
# admit more.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension (case-insensitive); no I/O."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _describe(src: ImageSource) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else f"<{len(src)} bytes>"


@contextlib.contextmanager
def _reader(src: ImageSource) -> Iterator[IO[bytes]]:
    """A binary file object over a path or encoded bytes; BadImage when absent, unreadable or empty."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise BadImage("empty image data")
        yield io.BytesIO(bytes(src))
        return
    try:
        if os.stat(src).st_size == 0:
            raise BadImage("empty file")
        fp = open(src, "rb")
    except OSError as e:
        raise BadImage(f"cannot read the file ({e.strerror or e})") from e
    with fp:
        yield fp


def _open(fp: IO[bytes]) -> Image.Image:
    """Open lazily (header only). Huge JPEGs bypass Pillow's bomb check: draft() will shrink them."""
    try:
        return Image.open(fp)
    except Image.DecompressionBombError:
        fp.seek(0)
        if fp.read(2) != b"\xff\xd8":
            raise
        fp.seek(0)
        return JpegImagePlugin.JpegImageFile(fp)


def _draft_scale(size: tuple[int, int], max_side: int | None, max_pixels: int) -> int:
    """JPEG DCT scale (1, 2, 4 or 8): the most reduction that keeps the shorter side >= max_side,
    within max_pixels; without max_side, the least reduction that fits max_pixels."""
    w, h = size
    dims = {s: (-(-w // s), -(-h // s)) for s in (1, 2, 4, 8)}  # Pillow's draft rounds up
    fits = [s for s, (dw, dh) in dims.items() if dw * dh <= max_pixels]
    if not fits:
        return 8  # still too large: the caller refuses it
    enough = [s for s in fits if max_side is not None and min(dims[s]) >= max_side]
    return enough[-1] if enough else fits[0]


def _rescale_to_uint8(a: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Integer/float greys to uint8: divide by a known full scale (65535 for 16-bit), else min-max."""
    a = a.astype(np.float64)
    if full_scale is None:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo if hi > lo else 1.0)
    else:
        a = np.clip(a, 0.0, full_scale) / full_scale
    return np.round(a * 255.0).astype(np.uint8)


def _grey_to_l(im: Image.Image) -> Image.Image:
    """Modes I;16*, I and F -> L, scaling (not clipping) the value range to 8 bits."""
    a = np.asarray(im)  # [H, W]
    if im.mode.startswith("I;16"):
        return Image.fromarray(_rescale_to_uint8(a, 65535.0))
    if im.mode == "I":  # 16-bit PNG/TIFF greys land here; anything outside 0..65535 is min-max scaled
        in_16bit = a.size == 0 or (a.min() >= 0 and a.max() <= 65535)
        return Image.fromarray(_rescale_to_uint8(a, 65535.0 if in_16bit else None))
    a = np.nan_to_num(a.astype(np.float64))  # "F"
    in_unit = a.size == 0 or (a.min() >= 0.0 and a.max() <= 1.0)
    return Image.fromarray(_rescale_to_uint8(a, 1.0 if in_unit else None))


def _on_white(im: Image.Image) -> Image.Image:
    """RGBA -> RGB composited on white."""
    background = Image.new("RGB", im.size, (255, 255, 255))
    background.paste(im, mask=im.getchannel("A"))
    return background


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: greys scaled to 8 bits, transparency composited on white, CMYK converted."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":
        im = _grey_to_l(im)
        mode = "L"
    if mode == "1":
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return _on_white(im if mode == "RGBA" else im.convert("RGBA"))  # palette/colour-key alpha too
    if mode in ("LAB", "HSV"):
        raise BadImage(f"unsupported colour mode {mode}")
    return im.convert("RGB")  # L, P, CMYK (Adobe-inverted CMYK is undone by Pillow's JPEG reader), YCbCr, RGBX


def _shrink(im: Image.Image, max_side: int) -> Image.Image:
    """Resize so the shorter side is max_side (never enlarges)."""
    w, h = im.size
    short = min(w, h)
    if short <= max_side:
        return im
    scale = max_side / short
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if im.mode not in ("RGB", "RGBA", "L", "LA") or "transparency" in im.info:
        im = to_rgb(im)  # palettes, 16-bit greys and colour keys are not resampled as they are
    return im.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)  # RGBA is resampled premultiplied


def decode_image(src: ImageSource, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 alpha: bool = False) -> Image.Image:
    """Decode a file path or encoded bytes to an RGB image; raises BadImage, never anything else.

    `max_side` bounds the shorter side of the result (the size a resize-then-crop transform needs);
    JPEGs are decoded directly at a reduced DCT scale. Non-JPEG images above `max_pixels` pixels are
    refused before their pixels are read (they cannot be decoded at a reduced size). EXIF
    orientation is applied. With `alpha`, an image with transparency comes back RGBA instead of
    composited on white (augmented views put cut-outs on varied backgrounds, data/augment.py).
    """
    try:
        with _reader(src) as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb, corrupt-EXIF and palette warnings: bounded here, not spam
            return _decode(_open(fp), max_side, max_pixels, alpha)
    except BadImage as e:
        raise type(e)(f"{_describe(src)}: {e}") from None
    except Image.DecompressionBombError as e:
        size = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(size.group(1)) / 1e6:.0f}M pixels" if size else "too many pixels"
        raise TooManyPixels(f"{_describe(src)}: {pixels} exceeds Pillow's hard limit of "
                       f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f}M") from None
    except MemoryError:
        raise BadImage(f"{_describe(src)}: out of memory while decoding") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise BadImage(f"{_describe(src)}: {type(e).__name__}: {e}") from e


def _decode(im: Image.Image, max_side: int | None, max_pixels: int, alpha: bool = False) -> Image.Image:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise BadImage(f"invalid size {w}x{h}")
    if im.format == "JPEG" and im.info.get("progressive"):
        # libjpeg keeps every DCT coefficient of a progressive JPEG (about 2 bytes per declared pixel)
        # however small it is drafted, so its declared size is bounded like any other format's
        if w * h > max_pixels:
            raise TooManyPixels(f"progressive JPEG of {w}x{h} = {w * h / 1e6:.0f}M declared pixels exceeds the decode "
                           f"bound of {max_pixels / 1e6:.0f}M (its decoder holds every pixel's coefficients)")
    elif im.format == "JPEG":
        scale = _draft_scale(im.size, max_side, max_pixels)
        if scale > 1:
            im.draft(im.mode, (max(1, w // scale), max(1, h // scale)))
        w, h = im.size
    if w * h > max_pixels:
        raise TooManyPixels(f"{w}x{h} = {w * h / 1e6:.0f}M pixels exceeds the decode bound of {max_pixels / 1e6:.0f}M")
    im.load()
    orientation = im.getexif().get(_ORIENTATION, 1)
    if max_side is not None:
        im = _shrink(im, max_side)  # before compositing: less memory for huge RGBA images
    transparent = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    im = im.convert("RGBA") if alpha and transparent and not im.mode.startswith("I") else to_rgb(im)
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    return im


def load_rgb(src: ImageSource | Image.Image | np.ndarray, max_side: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Whatever a source yields (path, bytes, PIL image, array [H, W] / [H, W, C] / [C, H, W]) -> RGB image."""
    if isinstance(src, (bytes, bytearray, memoryview, str, os.PathLike)):
        return decode_image(src, max_side, max_pixels)
    try:
        if not isinstance(src, Image.Image):
            a = np.asarray(src)
            if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
                a = np.moveaxis(a, 0, -1)  # [C, H, W] -> [H, W, C]
            if a.ndim == 3 and a.shape[-1] == 1:
                a = a[..., 0]  # [H, W]
            if a.dtype != np.uint8:
                unit = a.dtype.kind == "f" and a.size and a.min() >= 0 and a.max() <= 1
                a = _rescale_to_uint8(a, 1.0 if unit else None)
            src = Image.fromarray(a)
        im = to_rgb(src)
        return _shrink(im, max_side) if max_side is not None else im
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot make an RGB image of a {type(src).__name__}: {e}") from e
