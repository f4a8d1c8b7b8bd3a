"""Label lists from text: the one parser `zeroshift predict`, `export` and the service share."""
from __future__ import annotations

from pathlib import Path


def parse_labels(text: str, files: bool = False) -> list[str]:
    """Labels from "a,b,c" or newline-separated text (split at newlines when there is one, else at
    commas; blanks dropped). With `files`, text naming an existing .txt file is that file's text
    (one label per line): the command line allows it, the service never reads a file."""
    if files and text.endswith(".txt") and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    sep = "\n" if "\n" in text else ","
    return [s.strip() for s in text.split(sep) if s.strip()]
