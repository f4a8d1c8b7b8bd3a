"""Class names from folder names and label strings, shared by the file, csv, hf, torchvision and wds sources."""
from __future__ import annotations

import re
from collections.abc import Sequence


def readable(name: str) -> str:
    """A folder or class identifier as words: 'apple_pie' / 'apple-pie' -> 'apple pie'."""
    return " ".join(re.sub(r"[_\-]+", " ", name).split())


def words(name: str) -> str:
    """A class name given as text, with underscores as spaces: 'aquarium_fish' -> 'aquarium fish'."""
    return " ".join(name.replace("_", " ").split())


def sort_labels(values: Sequence[str]) -> list[str]:
    """Distinct label strings sorted, numerically when all are integers (so '10' follows '9')."""
    distinct = set(values)
    if all(re.fullmatch(r"-?\d+", v) for v in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def index_labels(names: Sequence[str]) -> tuple[list[int], list[str]]:
    """Label strings per row ('' = unknown) -> (label per row, -1 where unknown; class names as words).
    Classes are the distinct strings sorted by `sort_labels`, so a label is an index into them."""
    classes = sort_labels([n for n in names if n])
    position = {c: i for i, c in enumerate(classes)}
    return [position[n] if n else -1 for n in names], [words(c) for c in classes]
