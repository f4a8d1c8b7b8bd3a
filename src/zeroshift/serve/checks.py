"""Checks of decoded request fields (labels, templates, texts, images) against the server's limits.

No web framework here: the engine runs these on the fields `bodies` parsed, so every bad value is a
one-line RequestError (400) or TooLarge (413).

Text the client sends (labels, templates, texts, image names) must be plain text: no lone surrogates
(U+D800-U+DFFF: JSON's "\\ud800" escapes decode to them, and neither the response nor a tokenizer
can write them as UTF-8) and no control characters (category Cc: U+0000-U+001F, U+007F-U+009F) nor
line separators (U+2028, U+2029), which break tokenizers and one-line outputs. Labels and templates
are judged as used, stripped of surrounding whitespace. Texts to embed may hold line breaks (tab, LF,
CR, U+2028, U+2029): a passage has lines. Every other code point is text and passes: format
characters such as the zero-width joiner of emoji sequences, private-use and unassigned ones.
"""
from __future__ import annotations

import binascii
import io
import re
import warnings
from collections.abc import Sequence, Sized

from PIL import Image

from ..data.base import BadImage, TooManyPixels
from ..data.images import decode_image
from ..errors import ZeroshiftError
from ..zeroshot.classifier import check_classnames
from .config import MAX_TEMPLATES, MAX_TEXT_CHARS
from .errors import RequestError, TooLarge, one_line

NO_LABELS = "no labels given: send labels, comma- or newline-separated (e.g. 'cat,dog')"
ODD = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")  # refused in every text field
ODD_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")  # texts keep line breaks


def check_count(items: Sized, what: str, limit: int) -> None:
    """TooLarge when a request holds more than `limit` of `what` (images, labels, templates, texts)."""
    if len(items) > limit:
        raise TooLarge(f"{len(items)} {what}; this server takes at most {limit} per request")


def check_list(items: Sized, what: str, limit: int, empty: str) -> None:
    """RequestError(`empty`) for no items, TooLarge for more than `limit`."""
    if not items:
        raise RequestError(empty)
    check_count(items, what, limit)


def check_length(text: str, what: str) -> None:
    """RequestError when one text (`what`: 'label 3', 'template 0', ...) is over MAX_TEXT_CHARS."""
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(f"{what} is {len(text)} characters long; at most {MAX_TEXT_CHARS}")


def shown(text: str, limit: int = 60) -> str:
    """`text` (cut at `limit` characters) as a quoted Python literal: control characters and lone
    surrogates escaped, so a message holding it is one line that encodes as UTF-8."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def check_chars(text: str, what: str, odd: re.Pattern = ODD) -> None:
    """RequestError naming `what` ('label 3', 'image 0's name', ...), the text and the first character
    `odd` matches: a lone surrogate or a control character (see the module's docstring for the rule)."""
    found = odd.search(text)
    if found is None:
        return
    code = ord(found.group())
    kind = ("a lone surrogate, which is not text" if 0xD800 <= code <= 0xDFFF
            else "a line separator" if code in (0x2028, 0x2029) else "a control character")
    raise RequestError(f"{what} {shown(text)} holds U+{code:04X} ({kind}) at position {found.start()}; "
                       "send plain text without control characters or lone surrogates")


def check_labels(labels: Sequence[str], limit: int) -> list[str]:
    """Stripped labels; RequestError on none, blank, duplicate or overlong ones, TooLarge beyond `limit`."""
    check_list(labels, "labels", limit, NO_LABELS)
    for i, label in enumerate(labels):
        if isinstance(label, str):
            check_length(label, f"label {i}")
            check_chars(label.strip(), f"label {i}")
    try:
        return check_classnames(labels)
    except ZeroshiftError as e:
        raise RequestError(str(e)) from None


def check_templates(templates: Sequence[str]) -> list[str]:
    """Request templates, each holding '{c}' and no other braces; RequestError otherwise."""
    out = []
    for i, t in enumerate(templates):
        if not isinstance(t, str):
            raise RequestError(f"template {i} is not a string; give lines such as 'a photo of a {{c}}.'")
        check_chars(t.strip(), f"template {i}")
        if t.strip():
            out.append(t.strip())
    if not out:
        raise RequestError("no templates given; leave templates out or give lines such as 'a photo of a {c}.'")
    check_count(out, "templates", MAX_TEMPLATES)
    for i, t in enumerate(out):
        check_length(t, f"template {i}")
        rest = t.replace("{c}", "")
        if "{c}" not in t or "{" in rest or "}" in rest:
            raise RequestError(f"template {i} {t[:60]!r} must contain '{{c}}' where the label goes, and no other braces")
    return out


def check_texts(texts: Sequence[str], limit: int) -> list[str]:
    """Texts to embed: 1..limit non-empty strings of at most MAX_TEXT_CHARS."""
    check_list(texts, "texts", limit, "no texts given; send {\"texts\": [\"a photo of a cat\", ...]}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise RequestError(f"text {i} is empty or not a string; every text needs some characters")
        check_length(t, f"text {i}")
        check_chars(t, f"text {i}", ODD_IN_TEXT)
    return list(texts)


def check_images(images: Sequence[tuple[str, bytes]], limit: int) -> None:
    """RequestError for no images or an image name that is not plain text, TooLarge for more than `limit`."""
    check_list(images, "images", limit, "no images given; send one or more image files")
    for i, (name, _) in enumerate(images):
        check_chars(name, f"image {i}'s name")


def decode_base64(data: str, what: str) -> bytes:
    """Bytes of standard base64 (whitespace ignored, an optional `data:...;base64,` prefix dropped)."""
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or not head.endswith(";base64"):
            raise RequestError(f"{what}: a data URL must be base64 ('data:image/png;base64,...')")
    try:
        return binascii.a2b_base64("".join(data.split()).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RequestError(f"{what}: data is not valid base64") from None


def decode_upload(data: bytes, name: str, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """An uploaded file -> RGB image, as `zeroshift predict` decodes it (shorter side `max_side`, JPEGs
    drafted); TooLarge for decompression bombs (judged from the header, before any pixel is read),
    RequestError for anything unreadable."""
    if not data:
        raise RequestError(f"image {name!r} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = Image.open(io.BytesIO(data))  # lazy: header only
            w, h = header.size
            drafted = header.format == "JPEG" and not header.info.get("progressive")  # decoded reduced
    except Image.DecompressionBombError:
        if not data.startswith(b"\xff\xd8"):  # baseline JPEGs are drafted down by decode_image
            raise TooLarge(f"image {name!r} has more pixels than Pillow's decompression-bomb limit") from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on bad data
        raise RequestError(f"image {name!r} is not an image this server can read") from None
    else:
        if not drafted and w * h > max_pixels:
            raise TooLarge(f"image {name!r} is {w}x{h} = {w * h / 1e6:.1f}M pixels; this server decodes at most "
                           f"{max_pixels / 1e6:.1f}M")
    try:
        return decode_image(data, max_side, max_pixels)
    except TooManyPixels as e:  # a bomb only the decoder could judge (a JPEG past Pillow's own limit)
        raise TooLarge(f"image {name!r} is too large ({one_line(e).removeprefix(f'<{len(data)} bytes>: ')})"
                       ) from None
    except BadImage as e:
        raise RequestError(f"image {name!r} cannot be decoded ({one_line(e).removeprefix(f'<{len(data)} bytes>: ')})"
                           ) from None
