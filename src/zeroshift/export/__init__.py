"""Deployment: a VLM with fixed labels written as one file another runtime can run (ONNX for now)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ZeroshiftError

FORMATS = ("onnx",)


def export(model, labels: Sequence[str], out: str | os.PathLike, format: str = "onnx",
           templates: str | None = None, check: bool = True, overwrite: bool = False) -> Path:
    """Export `model` (a VLM or a spec, loaded with PyTorch towers) as a zero-shot classifier over
    `labels` (at least two) to `out`; returns the file written (a sidecar `<out>.json` describes it).
    An existing `out` is replaced only with `overwrite`, as the training commands replace a run."""
    if format not in FORMATS:
        raise ZeroshiftError(f"export format must be one of {', '.join(FORMATS)}; got {format!r}")
    from ..paths import user_path
    from ..specs import require
    from ..zeroshot.classifier import check_classnames

    require(model, "vlm", "model", command="export")
    labels = check_classnames(list(labels), at_least=2)  # before loading: a bad label list fails at once
    path = user_path(out)
    if path.is_dir():
        raise ZeroshiftError(f"out {path} is a folder; give a file name such as {path / 'classifier.onnx'}")
    if path.exists() and not overwrite:
        raise ZeroshiftError(f"out {path} already exists; pass overwrite (--overwrite) to replace it, "
                             "or choose another out file")
    if isinstance(model, str):
        from ..specs import load

        model = load(model, runtime="torch")
    from .onnx import export_classifier

    return export_classifier(model, labels, out, templates=templates, check=check)


__all__ = ["FORMATS", "export"]
