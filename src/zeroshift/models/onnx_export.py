"""The one PyTorch -> ONNX exporter: the runtime cache (models/runtime.py) and `zeroshift export`
(export/onnx.py) both trace through `to_onnx`."""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ZeroshiftError

if TYPE_CHECKING:
    import onnx

OPSET = 17


def first_line(error: BaseException) -> str:
    """The first line of an exception's message without terminal colours, at most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def to_onnx(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], input_name: str | tuple[str, ...],
            output_name: str, opset: int = OPSET, axes: dict[str, dict[int, str]] | None = None) -> "onnx.ModelProto":
    """`module` traced on `example` into an in-memory ONNX model with a dynamic batch axis: the
    TorchScript exporter (fast and mature for CNNs and ViTs), then torch.export's if the first fails.
    Several inputs: `example` and `input_name` are tuples, and `axes` names each input's dynamic axes
    (default: the batch axis only)."""
    import onnx

    examples = example if isinstance(example, tuple) else (example,)
    inputs = list(input_name) if isinstance(input_name, (tuple, list)) else [input_name]
    axes = axes or {name: {0: "batch"} for name in inputs}
    names = {"input_names": inputs, "output_names": [output_name]}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice and constant-folding chatter
            torch.onnx.export(module, examples, buffer, dynamo=False, opset_version=opset,
                              dynamic_axes={**axes, output_name: {0: "batch"}}, **names)
        return onnx.load_from_string(buffer.getvalue())
    except Exception as first:  # noqa: BLE001 - try the other exporter
        error = first
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            shapes = tuple({k: torch.export.Dim.DYNAMIC for k in axes[name]} for name in inputs)
            program = torch.onnx.export(module, examples, dynamo=True, opset_version=opset,
                                        dynamic_shapes=shapes, **names)
        return program.model_proto
    except Exception as second:
        raise ZeroshiftError(f"could not export to ONNX: {first_line(error)} "
                             f"(torch.export: {first_line(second)})") from second
