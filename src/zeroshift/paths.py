"""Where zeroshift keeps fetched data, caches and exported models: $ZEROSHIFT_HOME (default ~/.cache/zeroshift)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import MissingWeights, SpecError, ZeroshiftError


def user_path(value: str | os.PathLike) -> Path:
    """`value` as a Path with a leading `~` or `~user` expanded; an unknown user (or no home folder) is a
    one-line SpecError instead of the RuntimeError `Path.expanduser` raises."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        head = str(value).split("/", 1)[0]
        raise SpecError(f"cannot expand {head!r} in {str(value)!r}: no such user or no home folder; "
                        "give the path without '~'") from None


def home() -> Path:
    """The root folder for everything zeroshift stores outside a run folder."""
    return user_path(os.environ.get("ZEROSHIFT_HOME") or Path.home() / ".cache" / "zeroshift")


def data_dir() -> Path:
    """Fetched offline datasets (unpacked Debian packages and the like)."""
    return home() / "data"


def features_dir() -> Path:
    """Default location of feature caches keyed by (model, preprocessing, data)."""
    return home() / "features"


def onnx_dir() -> Path:
    """Exported ONNX image towers keyed by spec and weights."""
    return home() / "onnx"


def slug(text: str, limit: int = 60) -> str:
    """`text` (a spec) as a readable file-name fragment: other characters become '_', cut at `limit`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:limit]


def local_or_hub(arg: str, spec: str, what: str) -> str:
    """`arg` of `spec` as an absolute folder when it exists, else as a hub id; a path-like `arg` that does
    not exist (starting with /, . or ~) is a MissingWeights naming `what` was looked for."""
    folder = user_path(arg)
    if folder.exists():
        return str(folder.resolve())
    if arg.startswith(("/", ".", "~")):
        raise MissingWeights(f"no {what} at {arg} (from spec {spec!r})")
    return arg


def output_folder(value: str | os.PathLike, what: str) -> Path:
    """`value` as a folder to write into, checked before any work: it, and the nearest part of it that
    exists, must be folders (an existing file there is a one-line ZeroshiftError naming `what`)."""
    path = user_path(value)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is" if part == path else f"lies under {part}, which is"
                raise ZeroshiftError(f"{what} {path} {where} an existing file, not a folder; choose another folder")
            break
    return path
