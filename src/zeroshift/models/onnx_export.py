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


def to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str,
            opset: int = OPSET) -> "onnx.ModelProto":
    """`module` traced on `example` into an in-memory ONNX model with a dynamic batch axis: the
    TorchScript exporter (fast and mature for CNNs and ViTs), then torch.export's if the first fails."""
    import onnx

    names = {"input_names": [input_name], "output_names": [output_name]}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice and constant-folding chatter
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, **names)
        return onnx.load_from_string(buffer.getvalue())
    except Exception as first:  # noqa: BLE001 - try the other exporter
        error = first
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), **names)
        return program.model_proto
    except Exception as second:
        raise ZeroshiftError(f"could not export to ONNX: {first_line(error)} "
                             f"(torch.export: {first_line(second)})") from second
