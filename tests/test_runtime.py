"""models/runtime.py: export once, cache, check against PyTorch, fall back or fail as asked."""
from __future__ import annotations

import warnings

import pytest
import torch
from helpers import ExportDiffers, TinyCNN

from zeroshift import load
from zeroshift.errors import SpecError, ZeroshiftError
from zeroshift.models import runtime
from zeroshift.models.onnx_encoder import OnnxImageEncoder
from zeroshift.models.transforms import probe_batch


@pytest.fixture(autouse=True)
def home(home):
    """conftest's $ZEROSHIFT_HOME, and no fallback warned about yet."""
    runtime._warned.clear()
    return home


@pytest.fixture
def exports(monkeypatch):
    """Count calls to the exporter."""
    calls = []
    real = runtime._export_to

    def counted(module, example, target):
        calls.append(target)
        real(module, example, target)

    monkeypatch.setattr(runtime, "_export_to", counted)
    return calls


def test_accelerated_matches_torch_and_keeps_identity():
    enc = TinyCNN()
    fast = runtime.accelerate(enc, "onnx")
    assert isinstance(fast, OnnxImageEncoder)
    assert fast.spec == enc.spec and fast.dim == enc.dim and fast.image_transform is enc.image_transform
    assert fast.torch_encoder is enc
    x = probe_batch(enc.image_transform, 7, seed=3)  # another batch size than export and check used
    assert torch.allclose(fast.encode_image(x), enc.encode_image(x), atol=1e-4)
    assert fast.encode_image(x[:0]).shape == (0, 6)
    assert runtime.accelerate(enc, "torch") is enc
    assert runtime.accelerate(fast, "onnx") is fast  # already onnxruntime
    with pytest.raises(SpecError):
        runtime.accelerate(enc, "tensorrt")


def test_export_is_cached_by_weights(home, exports):
    enc = TinyCNN()
    runtime.accelerate(enc, "onnx")
    runtime.accelerate(enc, "onnx")
    assert len(exports) == 1
    files = sorted((home / "onnx").glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith("test_tiny-cnn-")
    assert not list((home / "onnx").glob("*.tmp-*"))
    changed = TinyCNN(seed=1)  # same spec, other weights: a new export
    fast = runtime.accelerate(changed, "onnx")
    assert len(exports) == 2 and len(list((home / "onnx").glob("*.onnx"))) == 2
    x = probe_batch(changed.image_transform, 2)
    assert torch.allclose(fast.encode_image(x), changed.encode_image(x), atol=1e-4)


def test_failing_check_falls_back_under_auto_and_raises_under_onnx():
    enc = ExportDiffers(spec="test:differs")
    with pytest.warns(RuntimeWarning, match="test:differs"):
        assert runtime.accelerate(enc, "auto") is enc
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per spec: a second fallback is silent
        assert runtime.accelerate(enc, "auto") is enc
    with pytest.raises(ZeroshiftError, match="differs from PyTorch"):
        runtime.accelerate(enc, "onnx")
    assert not enc.training  # the encoder's mode is left as it was


def test_interrupted_export_leaves_no_finished_file(home, monkeypatch):
    enc = TinyCNN()

    def killed(module, example, target):
        target.write_bytes(b"half an onnx file")
        raise KeyboardInterrupt  # stands in for a kill in the middle of writing

    monkeypatch.setattr(runtime, "_export_to", killed)
    with pytest.raises(KeyboardInterrupt):
        runtime.accelerate(enc, "auto")
    assert not list((home / "onnx").glob("*.onnx"))


def test_stale_temp_file_is_not_taken_as_an_export(home, exports):
    enc = TinyCNN()
    example = probe_batch(enc.image_transform, 1)
    final = runtime.export_path(enc, tuple(example.shape[1:]))
    final.parent.mkdir(parents=True)
    stale = final.with_name(final.name + ".tmp-999-deadbeef")
    stale.write_bytes(b"left by a killed export")
    fast = runtime.accelerate(enc, "onnx")
    assert len(exports) == 1 and final.is_file() and isinstance(fast, OnnxImageEncoder)
    x = probe_batch(enc.image_transform, 2)
    assert torch.allclose(fast.encode_image(x), enc.encode_image(x), atol=1e-4)


def test_export_failure_falls_back(monkeypatch):
    enc = TinyCNN(spec="test:unexportable")

    def broken(module, example, target):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(runtime, "_export_to", broken)
    with pytest.warns(RuntimeWarning, match="unsupported operator"):
        assert runtime.accelerate(enc, "auto") is enc
    with pytest.raises(ZeroshiftError, match="unsupported operator"):
        runtime.accelerate(enc, "onnx")


def test_vlm_image_tower_is_accelerated_through_load():
    vlm = load("tiny-clip:seed=0", runtime="onnx")
    assert isinstance(vlm.image, OnnxImageEncoder)
    reference = load("tiny-clip:seed=0")
    x = probe_batch(vlm.image_transform, 3)
    assert torch.allclose(vlm.encode_image(x), reference.encode_image(x), atol=1e-4)
    assert torch.equal(vlm.encode_text(["a cat"]), reference.encode_text(["a cat"]))

