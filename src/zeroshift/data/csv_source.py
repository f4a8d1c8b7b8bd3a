"""csv:FILE, image paths with labels and/or captions, with a header or as two bare columns."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, SpecError
from .files import FileSource
from .images import DEFAULT_MAX_PIXELS
from .labels import index_labels
from ..paths import user_path

_PATH_COLUMNS = ("path", "image", "image_path", "filepath", "file", "filename")
_LABEL_COLUMNS = ("label", "class", "category")
_CAPTION_COLUMNS = ("caption", "text", "title")


def _pick(header: list[str], names: Sequence[str]) -> int | None:
    lower = [h.strip().lower() for h in header]
    return next((lower.index(n) for n in names if n in lower), None)


def _undecodable(text: str) -> bool:
    """True when `text` holds bytes that were not UTF-8 (read with errors='surrogateescape')."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _looks_like_header(row: list[str]) -> bool:
    """A first row that names any known column is a header, even when it names no path column."""
    known = {*_PATH_COLUMNS, *_LABEL_COLUMNS, *_CAPTION_COLUMNS}
    return any(c.strip().lower() in known for c in row)


def _second_column_kind(values: list[str]) -> str:
    """Guess whether a headerless second column holds labels or captions: classes repeat, captions
    are mostly unique sentences."""
    words = np.mean([len(v.split()) for v in values]) if values else 0.0
    if len(set(values)) < len(values):
        return "caption" if words > 4 else "label"
    return "caption" if any(len(v.split()) > 1 for v in values) else "label"


def csv_source(arg: str, kind: str | None = None, max_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> FileSource:
    """csv:FILE. A header naming `path` and `label` and/or `caption` columns, or a headerless
    two-column `path,label` / `path,caption` file (`kind` = 'label' | 'caption' says which; guessed
    otherwise). Relative paths are resolved against the CSV's folder; label strings become classes,
    sorted (numerically when they are integers). Rows keep the file's order."""
    if not arg:
        raise SpecError("'csv:' needs a file, e.g. csv:pairs.csv")
    file = user_path(arg)
    spec = f"csv:{arg}"
    try:
        # Bytes that are not UTF-8 survive as surrogates: the row stays, and users of its text (align's
        # captions) can skip and count it instead of losing the whole file.
        with open(file, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except OSError as e:
        raise DataError(f"{spec}: cannot read the file ({e.strerror or e})") from e
    except csv.Error as e:
        raise DataError(f"{spec}: not a readable CSV file ({e})") from e
    if not rows:
        raise DataError(f"{spec}: the file holds no rows")
    header = rows[0]
    p_col = _pick(header, _PATH_COLUMNS)
    if p_col is None and _looks_like_header(header):
        raise DataError(f"{spec}: the header {','.join(header)!r} names no image-path column; name it one of "
                        f"{', '.join(_PATH_COLUMNS)} (labels: {', '.join(_LABEL_COLUMNS)}; captions: "
                        f"{', '.join(_CAPTION_COLUMNS)})")
    if p_col is not None:
        l_col, c_col = _pick(header, _LABEL_COLUMNS), _pick(header, _CAPTION_COLUMNS)
        rows = rows[1:]
        if kind is not None:
            raise DataError(f"{spec}: kind= is only for headerless files; this one has a header")
    else:
        if any(len(r) != 2 for r in rows):
            raise DataError(f"{spec}: without a header line (path,label or path,caption) every row must have 2 columns")
        kind = kind or _second_column_kind([r[1] for r in rows])
        if kind not in ("label", "caption"):
            raise SpecError(f"{spec}: kind must be 'label' or 'caption', not {kind!r}")
        p_col, l_col, c_col = 0, (1 if kind == "label" else None), (1 if kind == "caption" else None)
    if not rows:
        raise DataError(f"{spec}: the file holds a header but no rows")
    width = max(c for c in (p_col, l_col, c_col) if c is not None) + 1
    short = next((n for n, r in enumerate(rows) if len(r) < width), None)
    if short is not None:
        raise DataError(f"{spec}: data row {short + 1} has {len(rows[short])} columns, expected {width}")

    base = file.parent
    files, keys, seen, bad = [], [], {}, {}
    for n_row, r in enumerate(rows):
        rel = r[p_col].strip()
        for col, what in ((p_col, "path"), (c_col, "caption")):
            if col is not None and _undecodable(r[col]):
                bad[n_row] = f"the CSV's {what} in data row {n_row + 1} is not UTF-8 text"
        files.append(Path(rel) if os.path.isabs(rel) else base / rel)
        n = seen.get(rel, 0)
        seen[rel] = n + 1
        keys.append(rel if n == 0 else f"{rel}#{n}")  # the same image listed again (several captions)
    labels = classes = captions = None
    if l_col is not None:
        odd = next((n for n, r in enumerate(rows) if _undecodable(r[l_col])), None)
        if odd is not None:
            raise DataError(f"{spec}: the label in data row {odd + 1} is not UTF-8 text; class names must be")
        labels, classes = index_labels([r[l_col].strip() for r in rows])
    if c_col is not None:
        captions = [r[c_col].strip() for r in rows]
    return FileSource(spec, files, keys, labels, classes, captions, max_side, max_pixels, bad=bad)
