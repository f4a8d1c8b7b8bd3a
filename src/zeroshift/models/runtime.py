"""Run frozen image encoders through onnxruntime: export once, cache, check against PyTorch.

The export is cached under paths.onnx_dir() by a key over the spec, the encoder's class, a digest of
its weights, the input shape and the torch version, so changed weights or a new torch re-export. An
export is written to a temporary name and renamed when complete: a killed export leaves no file that
could be taken for a finished one. Every acceleration is checked on a probe batch against PyTorch.
"""
from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .. import paths
from ..choices import RUNTIMES
from ..errors import SpecError, ZeroshiftError
from ..io import atomic_path
from .onnx_export import to_onnx
from .transforms import probe_batch
from .vlm import ImageEncoder

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
    """`module` traced by the one exporter (images -> features) and saved to `target`."""
    import onnx

    onnx.save(to_onnx(module, example, "images", "features"), str(target))


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


def runtime_used(model: object) -> str:
    """What runs `model`'s frozen image towers after loading: 'onnx', 'torch', or 'onnx+torch' when its
    parts differ ('auto' resolved, for config.json and records)."""
    def found(m: object) -> set[str]:
        if getattr(m, "runs_onnx", False):
            return {"onnx"}
        parts = [getattr(m, name, None) for name in getattr(m, "runtime_parts", ())]
        return set().union(*(found(p) for p in parts if p is not None)) if parts else {"torch"}

    return "+".join(sorted(found(model))) or "torch"


_RECORDERS: list[dict[str, str]] = []


@contextlib.contextmanager
def recording() -> Iterator[dict[str, str]]:
    """Within the block, the dict yielded fills with {spec: runtime_used} of every model specs.load
    builds, so a run can record what its towers ran on rather than the 'auto' it was given."""
    found: dict[str, str] = {}
    _RECORDERS.append(found)
    try:
        yield found
    finally:
        _RECORDERS.remove(found)


def note(model: object) -> None:
    """Tell every active `recording` which runtime `model` (just loaded) runs on."""
    spec = getattr(model, "spec", None)
    if _RECORDERS and isinstance(spec, str):
        used = runtime_used(model)
        for found in _RECORDERS:
            found[spec] = used


def accelerate(model: nn.Module, runtime: str = "auto") -> nn.Module:
    """`model` (an image encoder or a VLM) with its frozen image towers run by `runtime`: 'torch' (as is),
    'onnx' (onnxruntime or a ZeroshiftError) or 'auto' (onnxruntime where export and check pass, else a
    warning and the torch tower).

    A model naming `runtime_parts` (a VLM's image tower, ConSE's classifier inside its mixing) is
    accelerated part by part, in place; a plain image encoder is exported whole and the returned one
    keeps its spec, dim and image_transform, with `.torch_encoder` holding the PyTorch module for
    training. Encoders that already run in onnxruntime are returned as they are.
    """
    if runtime not in RUNTIMES:
        raise SpecError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "torch" or getattr(model, "runs_onnx", False):
        return model
    parts = getattr(model, "runtime_parts", ())
    if isinstance(model, ImageEncoder) and not parts:
        return _accelerate_encoder(model, runtime)
    for name in parts:
        child = getattr(model, name)
        fast = accelerate(child, runtime)
        if fast is not child:
            setattr(model, name, fast)
    return model


def _accelerate_encoder(encoder: ImageEncoder, runtime: str) -> ImageEncoder:
    """One plain image encoder exported, loaded in onnxruntime and checked against PyTorch."""
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
                                 "use runtime 'torch' or 'auto' (--runtime)") from e
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
