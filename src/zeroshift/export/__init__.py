"""Deployment: a VLM written as files another runtime can run (ONNX): one classifier with fixed labels,
or (towers) an image and a text graph with the tokenizer, for labels chosen at run time.

Graphs take uint8 RGB pixels by default; export/preprocess.py brings an image to them and
export/run.py runs them, with numpy, Pillow, onnxruntime and tokenizers only."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ZeroshiftError

FORMATS = ("onnx",)


def _vlm(model, spec_or_model):
    from ..models.vlm import VLM

    if not isinstance(model, VLM):
        what = "an image encoder" if hasattr(model, "encode_image") else (
            "a text encoder" if hasattr(model, "encode_text") else type(model).__name__)
        raise ZeroshiftError(f"{getattr(model, 'spec', spec_or_model)} is {what}, not a VLM: export needs images "
                             "and texts in one space (conse:IMAGE+TEXT, run:..., openclip:..., hf-clip:...)")
    return model


def export(model, labels: Sequence[str] | None, out: str | os.PathLike, format: str = "onnx",
           templates: str | None = None, check: bool = True, input: str = "pixels", int8=None,
           keep_float: bool = False, towers: bool = False, overwrite: bool = False) -> Path:
    """Export `model` (a VLM or a spec, loaded with PyTorch towers) to `out`; returns what was written.

    Without `towers`: a zero-shot classifier over `labels`, one file `out` with a sidecar `<out>.json`.
    With `towers`: the folder `out` with image.onnx, text.onnx and tokenizer.json (labels optional, kept
    in the sidecar as the default ones). `input` 'pixels' (uint8 [N, H, W, 3]) or 'float' ([N, 3, H, W]
    after the model's transform); `int8` an export.quantize.Int8 to quantise (`keep_float` also writes
    the float graphs). An existing `out` is replaced only with `overwrite`, as the training commands
    replace a run."""
    if format not in FORMATS:
        raise ZeroshiftError(f"export format must be one of {', '.join(FORMATS)}; got {format!r}")
    from ..paths import user_path
    from ..specs import require
    from ..zeroshot.classifier import check_classnames

    require(model, "vlm", "model", command="export")
    if labels is not None or not towers:  # before loading: a bad label list fails at once
        labels = check_classnames(list(labels or []), at_least=2)
    path = user_path(out)
    if path.is_dir() and not towers:
        raise ZeroshiftError(f"out {path} is a folder; give a file name such as {path / 'classifier.onnx'}")
    taken = path.is_dir() and any(path.iterdir()) if towers else path.exists()  # a file for --towers: check_out says
    if taken and not overwrite:
        raise ZeroshiftError(f"out {path} already exists; pass overwrite (--overwrite) to replace it, "
                             "or choose another out")
    spec = model
    if isinstance(model, str):
        from ..specs import load

        model = load(model, runtime="torch")
    model = _vlm(model, spec)
    if towers:
        from .towers import export_towers

        written = export_towers(model, out, labels=labels, templates=templates, check=check, input=input,
                                int8=int8, keep_float=keep_float)
        _copy_card(model, written / "README.md")
        return written
    from .onnx import export_classifier

    written = export_classifier(model, labels, out, templates=templates, check=check, input=input, int8=int8,
                                keep_float=keep_float)
    _copy_card(model, written.with_name(written.name + ".README.md"))
    return written


def _copy_card(model, to: Path) -> None:
    """A run's model card (with its hub front matter) beside the exported graph, so it ships with it."""
    folder = getattr(model, "run_folder", None)
    card = None if folder is None else Path(folder) / "README.md"
    if card is not None and card.is_file():
        from ..io import write_bytes

        write_bytes(to, card.read_bytes())


__all__ = ["FORMATS", "export"]
