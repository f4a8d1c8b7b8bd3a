"""onnx:PATH[#OUTPUT][?size=224&norm=imagenet&crop=0.875&layout=nchw]: an image encoder run by onnxruntime.

OUTPUT names the graph output that holds the features (default: the first output); features are
flattened to [N, dim]. Options: `size` (input side, default the model's static input size or 224),
`norm` (imagenet, inception, clip or unit), `crop` (centre-crop fraction), `layout` (nchw or nhwc,
default read from the input shape). The same class runs exported torch encoders (models/runtime.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MissingWeights, SpecError
from ..ort import session
from .transforms import NORMS, probe_batch, resize_crop
from .vlm import ImageEncoder, ImageTransform
from ..paths import user_path

_OPTIONS = {"size", "norm", "crop", "layout"}


# Rows per onnxruntime call. Its memory arena keeps the largest activations it has seen: a CNN tower at
# 260 px and 64 rows held 1.4 GB more than at 16 rows, at the same speed or better (measured on 2 cores,
# EfficientNet-Lite2 on 640 images: 18.8-20.5 s at 64 rows, 16.7-17.4 s at 16).
CHUNK = 16


class OnnxImageEncoder(ImageEncoder):
    """images [N, 3, H, W] -> features [N, dim], computed by onnxruntime (inference only, no gradients),
    CHUNK rows per call."""

    runs_onnx = True

    def __init__(self, path: str | os.PathLike, spec: str, image_transform: ImageTransform,
                 output: str | None = None, layout: str | None = None, dim: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, torch.get_num_threads())
        inp = self.session.get_inputs()[0]
        self.input_name, input_shape = inp.name, list(inp.shape)
        outputs = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in outputs:
            raise SpecError(f"{self.path} has no output {output!r}; outputs: {', '.join(outputs)}")
        self.output = output or outputs[0]
        if layout is None:
            layout = "nhwc" if input_shape[-1] == 3 and input_shape[1] != 3 else "nchw"
        if layout not in ("nchw", "nhwc"):
            raise SpecError(f"layout must be nchw or nhwc, got {layout!r}")
        self.layout = layout
        self.fixed_batch = input_shape[0] if isinstance(input_shape[0], int) and input_shape[0] > 0 else None
        self.spec, self.image_transform = spec, image_transform
        self.dim = dim if dim is not None else self._probe_dim()

    def _probe_dim(self) -> int:
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.output)
        if len(shape) > 1 and all(isinstance(s, int) and s > 0 for s in shape[1:]):
            return int(np.prod(shape[1:]))
        return int(self(probe_batch(self.image_transform, 1)).shape[1])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input_name: batch})[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu()  # [N, 3, H, W]
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)  # [N, H, W, 3]
        x = np.ascontiguousarray(x.numpy())
        if len(x) == 0:
            return torch.zeros(0, self.dim, device=images.device)
        step = self.fixed_batch or CHUNK
        out = np.concatenate([self._run(x[i:i + step]) for i in range(0, len(x), step)])
        return torch.from_numpy(out.reshape(len(x), -1)).float().to(images.device)  # [N, dim]

    def torch_module(self) -> nn.Module | None:
        """The PyTorch encoder this graph was exported from (set by runtime.accelerate), else None."""
        return getattr(self, "torch_encoder", None)

    def onnx_file(self) -> Path:
        return self.path

    def graph_parameters(self) -> int:
        """The weights this graph holds (elements of its floating-point initializers), for cost reports;
        0 when it was exported from a PyTorch encoder kept beside it, whose parameters count instead."""
        if "torch_encoder" in self._modules:
            return 0
        if not hasattr(self, "_graph_parameters"):
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False).graph
            floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                        onnx.TensorProto.DOUBLE}
            self._graph_parameters = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type in floating)
        return self._graph_parameters

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, output={self.output!r}, layout={self.layout}, dim={self.dim}"


def parse(arg: str) -> tuple[str, str | None, dict[str, str]]:
    """Split `PATH[#OUTPUT][?k=v&...]` into (path, output, options)."""
    head, _, query = arg.partition("?")
    path, _, output = head.partition("#")
    options = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in _OPTIONS:
            raise SpecError(f"onnx: options are {', '.join(sorted(_OPTIONS))} (as ?key=value&...); got {item!r}")
        options[key] = value
    return path, output or None, options


def create(arg: str) -> OnnxImageEncoder:
    """Build an onnx: image encoder from `PATH[#OUTPUT][?options]`."""
    path, output, opts = parse(arg)
    if not path:
        raise SpecError("onnx: needs a file, e.g. onnx:model.onnx#features")
    file = user_path(path).resolve()
    if not file.is_file():
        raise MissingWeights(f"no ONNX file at {file} (from spec 'onnx:{arg}')")
    if opts.get("norm", "imagenet") not in NORMS:
        raise SpecError(f"onnx: norm must be one of {', '.join(NORMS)}; got {opts['norm']!r}")
    try:
        crop = float(opts.get("crop", 0.875))
        size = int(opts["size"]) if "size" in opts else None
    except ValueError as e:
        raise SpecError(f"onnx: size must be an integer and crop a number; got {opts}") from e
    if size is None:
        shape = session(file).get_inputs()[0].shape
        sides = [s for s in shape[1:] if isinstance(s, int) and s > 3]
        size = sides[0] if sides else 224
    transform = resize_crop(size, opts.get("norm", "imagenet"), crop)
    spec = f"onnx:{file}" + (f"#{output}" if output else "")
    if opts:
        spec += "?" + "&".join(f"{k}={opts[k]}" for k in sorted(opts))
    return OnnxImageEncoder(file, spec, transform, output=output, layout=opts.get("layout")).eval()
