"""Label lists from text: the one parser `zeroshift predict`, `export` and the service share.

With `files` (the command line), a value is read as a file when it *looks like a file*: it holds no
comma and no newline, and it ends in .txt, .csv or .json or holds a path separator (/ or \\). Such a
value naming no file is an error, so a typo (`labls.txt`) never becomes one label. A label file holds
one label per line, blank lines and lines starting with '#' skipped; a .json file holds a list of
strings. Anything else is "a,b,c" or newline-separated text. The service never reads a file.
"""
from __future__ import annotations

import json

from ..errors import ZeroshiftError
from ..paths import user_path

FILE_SUFFIXES = (".txt", ".csv", ".json")
RULE = ("a value with no comma that ends in .txt, .csv or .json or holds a / is read as a file: "
        "one label per line, blank and '#' lines skipped (.json: a list of strings)")


def looks_like_file(text: str) -> bool:
    """True when `text` is read as a label file name (see the module docstring for the rule)."""
    t = text.strip()
    if not t or "," in t or "\n" in t:
        return False
    return t.casefold().endswith(FILE_SUFFIXES) or "/" in t or "\\" in t


def read_label_file(name: str) -> list[str]:
    """The labels of a label file; one-line errors for a missing, unreadable or empty file."""
    path = user_path(name.strip())
    if path.is_dir():
        raise ZeroshiftError(f"labels {name!r} is a folder, not a label file; give a file with one label per line")
    if not path.is_file():
        raise ZeroshiftError(f"label file {path} does not exist ({RULE}); check the name, or give labels as 'a,b,c'")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ZeroshiftError(f"cannot read label file {path}: {str(e).splitlines()[0]}") from None
    if path.suffix.casefold() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ZeroshiftError(f"label file {path} is not valid JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ZeroshiftError(f"label file {path} must hold a JSON list of label strings")
        labels = [s.strip() for s in data if s.strip()]
    else:
        labels = [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not labels:
        raise ZeroshiftError(f"label file {path} holds no labels; write one label per line")
    return labels


def parse_labels(text: str, files: bool = False) -> list[str]:
    """Labels from "a,b,c" or newline-separated text (split at newlines when there is one, else at
    commas; blanks dropped). With `files`, a value that looks like a file is read as one (see above)."""
    if files and looks_like_file(text):
        return read_label_file(text)
    sep = "\n" if "\n" in text else ","
    return [s.strip() for s in text.split(sep) if s.strip()]
