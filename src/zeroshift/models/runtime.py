"""Run frozen image encoders through onnxruntime: export once, cache, check against PyTorch.

The export is cached under paths.onnx_dir() by a key over the spec, the encoder's class, a digest of
its weights, the input shape and the torch version, so changed weights or a new torch re-export. An
export is written to a temporary name and renamed when complete: a killed export leaves no file that
could be taken for a finished one. Every acceleration is checked on a probe batch against PyTorch.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import paths
from ..errors import SpecError, ZeroshiftError
from ..io import atomic_path
from .transforms import probe_batch
from .vlm import ImageEncoder

RUNTIMES = ("torch", "onnx", "auto")
TOLERANCE = 1e-4  # max abs difference allowed, relative to max(1, max |torch output|)
EXPORT_BATCH, CHECK_BATCH = 2, 3  # different sizes, so the check also exercises the dynamic batch axis
_warned: set[str] = set()


def weights_digest(module: nn.Module) -> str:
    """A hex digest over the names, shapes, dtypes and bytes of every tensor in `module`'s state_dict."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def export_path(encoder: ImageEncoder, input_shape: tuple[int, ...]) -> Path:
    """Where the ONNX export of `encoder` for inputs [N, *input_shape] is cached."""
    key = "\n".join([encoder.spec, type(encoder).__qualname__, str(encoder.dim), weights_digest(encoder),
                     str(tuple(input_shape)), torch.__version__])
    slug = paths.slug(encoder.spec)
    return paths.onnx_dir() / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def _export_to(module: nn.Module, example: torch.Tensor, target: Path) -> None:
    """torch.onnx.export with a dynamic batch axis: the TorchScript exporter (fast and mature for
    CNNs and ViTs), then the torch.export-based one if the first fails."""
    names = dict(input_names=["images"], output_names=["features"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice and constant-folding chatter
            torch.onnx.export(module, (example,), str(target), dynamo=False, opset_version=17,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, **names)
        return
    except Exception as first:  # noqa: BLE001 - fall through to the other exporter
        target.unlink(missing_ok=True)
        error = first
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(target), dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), **names)
    except Exception as second:
        raise RuntimeError(f"TorchScript exporter: {error}; torch.export exporter: {second}") from second


def export(encoder: ImageEncoder, example: torch.Tensor) -> Path:
    """The cached ONNX file of `encoder` (exported now if absent), for inputs shaped like `example`."""
    target = export_path(encoder, tuple(example.shape[1:]))
    if target.is_file():
        return target
    with atomic_path(target) as tmp:
        _export_to(encoder, example, tmp)
    return target


def check(reference: ImageEncoder, fast: ImageEncoder, batch: torch.Tensor) -> float:
    """Raise ZeroshiftError unless `fast` matches `reference` on `batch`; returns the max abs difference."""
    with torch.inference_mode():
        want = reference(batch).float()  # [B, dim]
    got = fast(batch)  # [B, dim]
    if got.shape != want.shape:
        raise ZeroshiftError(f"onnxruntime output {tuple(got.shape)} != PyTorch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    scale = max(1.0, float(want.abs().max()))
    if not diff <= TOLERANCE * scale:  # also catches NaN
        raise ZeroshiftError(f"onnxruntime differs from PyTorch by {diff:.3g} (allowed {TOLERANCE * scale:.3g})")
    return diff


def accelerate(encoder: ImageEncoder, runtime: str = "auto") -> ImageEncoder:
    """`encoder` run by `runtime`: 'torch' (as is), 'onnx' (onnxruntime or a ZeroshiftError) or 'auto'
    (onnxruntime where export and check pass, else a warning and the torch encoder).

    The returned encoder has the same spec, dim and image_transform; `.torch_encoder` keeps the
    PyTorch module for training. Encoders that already run in onnxruntime are returned as they are.
    """
    if runtime not in RUNTIMES:
        raise SpecError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "torch" or getattr(encoder, "runs_onnx", False):
        return encoder
    from .onnx_encoder import OnnxImageEncoder

    was_training = encoder.training
    encoder.eval()
    try:
        batch = probe_batch(encoder.image_transform, EXPORT_BATCH + CHECK_BATCH).to(_device(encoder))
        path = export(encoder, batch[:EXPORT_BATCH])
        fast = OnnxImageEncoder(path, encoder.spec, encoder.image_transform, output="features", dim=encoder.dim)
        check(encoder, fast, batch[EXPORT_BATCH:])
    except Exception as e:  # noqa: BLE001 - any failure means: not accelerated
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if runtime == "onnx":
            raise ZeroshiftError(f"could not run {encoder.spec} in onnxruntime: {reason[:300]}; "
                                 "use --runtime torch (or auto)") from e
        if encoder.spec not in _warned:
            _warned.add(encoder.spec)
            warnings.warn(f"{encoder.spec}: running in PyTorch, onnxruntime unavailable ({reason[:200]})",
                          RuntimeWarning, stacklevel=2)
        return encoder
    finally:
        encoder.train(was_training)
    fast.torch_encoder = encoder
    return fast.eval()


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
