"""The `synthetic:` option string, and the prompt set it names: class names x context phrases, in a
balanced order."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, SpecError
from ...paths import user_path

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


# upper bounds: an image of size=100000 would need 30 GB before the first one is drawn
_HIGH = {"n": 10_000_000, "seed": 2**63 - 1, "size": 2048, "steps": 1000, "batch": 1024}


def _int(opts: dict[str, str], key: str, low: int) -> int:
    value, high = opts[key], _HIGH[key]
    if not re.fullmatch(r"[+-]?\d+", value.strip()) or not low <= int(value) <= high:
        raise SpecError(f"synthetic: {key} must be an integer from {low} to {high:,}, got {key}={value!r}")
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
    if "+" in value and not user_path(value).is_file():
        parts = [resolve_classes(part) for part in value.split("+") if part]
        return list(dict.fromkeys(n for names, _ in parts for n in names)), "+".join(c for _, c in parts)
    from ... import specs

    path = user_path(value)
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
    path = user_path(value)
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
