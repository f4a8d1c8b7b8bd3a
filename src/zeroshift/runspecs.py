"""The model specs a run folder records (its encoder, teacher, towers), and the files they name.

A spec such as `onnx:enc.onnx` or `run:runs/aligned` names a file by a path, and a relative path means
nothing once the run folder is moved or downloaded. So RunWriter records every path absolute (made so
against the directory the run was trained from, where the user typed it), and loading reads a relative
path left in a config.json (a folder put together by hand) against the run folder, never against the
current directory. This module only rewrites spec strings: it reads no file (it asks at most whether a
path exists) and imports no backend.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .paths import user_path

SPEC_KEYS = ("encoder", "teacher", "student", "image", "text")  # config.json keys whose value is a model spec
_DIGEST = re.compile(r"[0-9a-fA-F]{6,64}")
_OUTPUTS = ("#features", "#logits")  # timm:/torchvision: output suffixes
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _join(base: Path | None, path: str) -> Path:
    """`path` with ~ expanded, made absolute against `base` when it is relative (kept as is without a base)."""
    p = user_path(path)
    return p if p.is_absolute() or base is None else (base / p).resolve()


def split_run(arg: str, base: Path | None = None) -> tuple[Path, str | None]:
    """`PATH[@DIGEST]` of a `run:` spec -> (path, digest or None); a relative PATH is read against `base`.
    A path that exists as given is never split."""
    whole = _join(base, arg)
    if whole.exists():
        return whole, None
    head, sep, digest = arg.rpartition("@")
    if sep and head and _DIGEST.fullmatch(digest):
        return _join(base, head), digest.lower()
    return whole, None


def _map_paths(spec: str, fn: Callable[[str, bool], str], base: Path | None = None) -> str:
    """`spec` with each file path in it replaced by fn(path, may_be_hub_name); other parts kept verbatim.
    The second argument is True where the part may also be a hub name or a pretrained tag."""
    scheme, sep, arg = spec.partition(":")
    if not sep or not arg:
        return spec
    if scheme == "run":
        _, digest = split_run(arg, base)
        head = arg if digest is None else arg[:-len(digest) - 1]
        return f"run:{fn(head, False)}" + ("" if digest is None else f"@{digest}")
    if scheme == "onnx":  # PATH[#OUTPUT][?options]
        path, rest = re.match(r"([^#?]*)(.*)", arg).groups()
        return f"onnx:{fn(path, False) if path else path}{rest}"
    if scheme in ("timm", "torchvision", "openclip"):  # NAME@TAG[#output], TAG random, a file, or (openclip) a tag
        name, at, tag = arg.partition("@")
        tail = next((s for s in _OUTPUTS if tag.endswith(s)), "") if scheme != "openclip" else ""
        tag = tag[:len(tag) - len(tail)]
        if not at or not tag or tag == "random" or name.startswith("hf-hub:"):
            return spec
        return f"{scheme}:{name}@{fn(tag, scheme == 'openclip')}{tail}"
    if scheme in ("hf-clip", "st"):  # a hub id or a local folder
        return f"{scheme}:{fn(arg, True)}"
    if scheme == "conse":  # IMAGE+TEXT, each a spec of its own
        image, plus, text = arg.rpartition("+")
        return f"conse:{_map_paths(image, fn, base)}+{_map_paths(text, fn, base)}" if plus else spec
    return spec


def _looks_like_file(path: str, base: Path | None) -> bool:
    """For a part that may be a hub name: True when it is plainly a path (./x, ~/x, /x, x.safetensors)
    or names something that exists under `base`."""
    if path.startswith((".", "~", "/")) or path.endswith(_WEIGHT_SUFFIXES):
        return True
    return base is not None and (base / path).exists()


def rebase(spec: str, base: Path) -> str:
    """`spec` with every relative file path in it made absolute against `base`: a run folder when loading
    it, the working directory when writing it. Hub names and pretrained tags are left alone."""
    def fn(path: str, may_be_hub: bool) -> str:
        if may_be_hub and not _looks_like_file(path, base):
            return path
        return str(_join(base, path))

    return _map_paths(spec, fn, base)


def spec_files(spec: str) -> list[str]:
    """The absolute file paths `spec` names (after rebase), for the model card."""
    found: list[str] = []

    def fn(path: str, may_be_hub: bool) -> str:
        if Path(path).is_absolute():
            found.append(path)
        return path

    _map_paths(spec, fn)
    return found


def recorded_specs(config: dict, base: Path) -> dict[str, str]:
    """{key: spec} for the model specs of a run's config, each rebased against `base`."""
    return {key: rebase(value, base) for key in SPEC_KEYS if isinstance(value := config.get(key), str)}
