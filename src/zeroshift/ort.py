"""onnxruntime CPU sessions, made one way for every caller: embedding (models/onnx_encoder.py), the
deployment runtime (export/run.py, which must not import torch) and export timing (export/timing.py)."""
from __future__ import annotations

import os

from .errors import ZeroshiftError


def session(path: str | os.PathLike, threads: int | None = None, spin: bool = True):
    """An onnxruntime CPU session on `threads` intra-op threads (None: onnxruntime's choice) and one
    inter-op thread; with `spin` False idle threads sleep instead of spinning (timing one model at a
    time). Memory patterns are off: they keep every activation of each batch shape run, hundreds of MB
    for a CNN tower, for no speed we could measure (docs/shrink.md). A graph onnxruntime refuses is a
    one-line ZeroshiftError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads, options.log_severity_level = 1, 3  # errors only
    options.enable_mem_pattern = False
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidGraph classes
        raise ZeroshiftError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None


__all__ = ["session"]
