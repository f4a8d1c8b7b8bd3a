"""Deployment: a VLM with fixed labels written as one file another runtime can run (ONNX for now)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ZeroshiftError

FORMATS = ("onnx",)


def export(model, labels: Sequence[str], out: str | os.PathLike, format: str = "onnx",
           templates: str | None = None, check: bool = True) -> Path:
    """Export `model` (a VLM or a spec, loaded with PyTorch towers) as a zero-shot classifier over
    `labels` to `out`; returns the file written (a sidecar `<out>.json` describes it)."""
    if format not in FORMATS:
        raise ZeroshiftError(f"export format must be one of {', '.join(FORMATS)}; got {format!r}")
    from ..specs import require
    from ..zeroshot.classifier import check_classnames

    require(model, "vlm", "model", command="export")
    labels = check_classnames(list(labels))  # before loading: a bad label list fails at once
    if isinstance(model, str):
        from ..specs import load

        model = load(model, runtime="torch")
    from .onnx import export_classifier

    return export_classifier(model, labels, out, templates=templates, check=check)


__all__ = ["FORMATS", "export"]
