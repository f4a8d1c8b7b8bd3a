"""models/student.py: the built-in students, build_student's checks, ONNX export, and distill run folders."""
from __future__ import annotations

import pytest
import torch
from helpers import export_onnx, one_line
from torch import nn

from zeroshift import load, specs
from zeroshift.errors import CacheMismatch, SpecError
from zeroshift.compose import build_student
from zeroshift.runfolder import RunWriter
from zeroshift.runs import load_run
from zeroshift.models.onnx_encoder import OnnxImageEncoder
from zeroshift.models.student import (
    Student,
    architecture_spec,
    check_encoder,
    create_cnn,
    create_vit,
    min_input,
    param_count,
)
from zeroshift.models.transforms import probe_batch, resize_crop
from zeroshift.models.vlm import ModuleEncoder, TowersVLM
from zeroshift.models.runtime import accelerate

BENCH_LIMIT = 488_000  # 8% of the teacher's 6.1M parameters, head included
TEACHER, TEACHER_DIM = "tiny-clip:seed=0", 32  # tiny-clip's default joint space is 32-d


pytestmark = pytest.mark.usefixtures("home")  # ONNX exports land there


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- the built-in students ---------------------------------------------------------------------

def test_default_students_fit_the_bench_budget():
    cnn = Student(create_cnn(), 384)
    assert 250_000 <= param_count(cnn) <= 450_000
    assert param_count(cnn) == param_count(cnn.encoder) + 384 * 384 + 384
    vit = Student(create_vit(), 384)
    assert 250_000 <= param_count(vit) < BENCH_LIMIT
    assert param_count(create_cnn("width=16")) < param_count(create_cnn()) < param_count(create_cnn("depth=3"))


def test_specs_are_canonical_and_load_through_the_registry():
    assert create_cnn().spec == "student-cnn:width=32,size=64,seed=0,depth=2"
    assert create_cnn("seed=3, size=48").spec == "student-cnn:width=32,size=48,seed=3,depth=2"
    assert create_vit("depth=2").spec == "student-vit:dim=128,depth=2,heads=4,mlp=1,patch=8,size=64,seed=0"
    enc = load("student-cnn:width=16")
    assert isinstance(enc, ModuleEncoder) and enc.spec == "student-cnn:width=16,size=64,seed=0,depth=2"
    assert not enc.training


@pytest.mark.parametrize("create", [create_cnn, create_vit])
def test_init_is_deterministic_for_a_seed_and_leaves_the_global_rng(create):
    torch.manual_seed(5)
    create("seed=1")
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)  # fork_rng: building a student draws nothing globally
    assert same_weights(create("seed=1"), create("seed=1"))
    assert not same_weights(create("seed=1"), create("seed=2"))


@pytest.mark.parametrize("create, arg, dim, side", [
    (create_cnn, "", 384, 64), (create_cnn, "width=8,depth=1,size=48", 96, 48),
    (create_vit, "", 128, 64), (create_vit, "dim=32,depth=1,heads=2,patch=16,size=32", 32, 32),
])
def test_forward_shapes_and_transform(create, arg, dim, side):
    enc = create(arg)
    x = probe_batch(enc.image_transform, 3)
    assert x.shape == (3, 3, side, side) and x.dtype == torch.float32
    assert enc.dim == dim and enc.encode_image(x).shape == (3, dim)
    assert enc.encode_image(x[:1]).shape == (1, dim)


def test_transform_is_split_batchable():
    from zeroshift.models.transforms import split_batchable

    _, per_batch = split_batchable(create_cnn().image_transform)
    assert per_batch is not None and len(per_batch.transforms) == 2  # ToDtype, Normalize


@pytest.mark.parametrize("create, arg, match", [
    (create_cnn, "colour=3", "student-cnn options are"),
    (create_cnn, "width=wide", "student-cnn options are"),
    (create_cnn, "width=0", "student-cnn options are"),
    (create_cnn, "depth", "student-cnn has no preset 'depth': presets are s, m, l"),
    (create_cnn, "size=8", "at least 16"),
    (create_vit, "patches=8", "student-vit options are"),
    (create_vit, "size=60", "not a multiple of patch 8"),
    (create_vit, "dim=100,heads=3", "not divisible by heads 3"),
])
def test_bad_options_are_one_line_spec_errors(create, arg, match):
    with pytest.raises(SpecError, match=match) as e:
        create(arg)
    one_line(e)


# --- Student and build_student -------------------------------------------------------------------

@pytest.mark.parametrize("spec, features", [
    ("student-cnn:width=8,depth=1", 96), ("student-vit:dim=32,depth=1,heads=2", 32),
    ("timm:test_efficientnet@random", 256),
])
def test_build_student_projects_into_the_teacher_space(spec, features):
    student = build_student(spec, 24)
    assert isinstance(student, Student) and student.dim == 24 and student.encoder.dim == features
    assert student.head.in_features == features and student.image_transform is student.encoder.image_transform
    assert student.spec == f"{student.encoder.spec}+head24"
    x = probe_batch(student.image_transform, 2)
    assert student.encode_image(x).shape == (2, 24)
    assert min_input(student) == x.shape[-1]


def test_student_trains_end_to_end():
    student = build_student("student-cnn:width=8,depth=1", 16).train()
    x = probe_batch(student.image_transform, 4)
    student(x).square().mean().backward()
    assert all(p.grad is not None for p in student.parameters())  # backbone and head both learn


def test_min_input_is_the_crop_side():
    assert min_input(create_cnn("size=80")) == 80
    assert min_input(build_student("timm:test_efficientnet@random", 8)) == 160  # timm's own crop


@pytest.fixture
def tiny_onnx(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "tiny.onnx")


def test_refuses_an_encoder_that_cannot_train(tiny_onnx):
    with pytest.raises(SpecError, match="cannot be trained as a student: it runs in onnxruntime") as e:
        build_student(f"onnx:{tiny_onnx}", 16)
    one_line(e)
    with pytest.raises(SpecError, match="cannot be trained as a student"):
        Student(load(f"onnx:{tiny_onnx}"), 16)
    frozen = create_cnn("width=8,depth=1").requires_grad_(False)
    with pytest.raises(SpecError, match="no trainable PyTorch parameters"):
        Student(frozen, 16)


def test_refuses_a_vlm_spec():
    with pytest.raises(SpecError, match="is a VLM; a student must be an image encoder") as e:
        build_student(TEACHER, 16)
    one_line(e)


class FeatureMap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 4)  # [N, 3, H / 4, W / 4]


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.lin(x.mean(dim=(2, 3)))  # [N, 3]
        return pooled, pooled


class NaNs(Pair):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.mean(dim=(2, 3))) * float("nan")  # [N, 3]


def _encoder(model: nn.Module, dim: int, spec: str) -> ModuleEncoder:
    return ModuleEncoder(nn.Sequential(nn.Conv2d(3, 3, 1), model), dim, resize_crop(32), spec)


@pytest.mark.parametrize("model, dim, match", [
    (FeatureMap(), 3, r"gives output of shape \(2, 3, 8, 8\)"),
    (nn.Flatten(), 3 * 32 * 32 // 2, r"gives output of shape \(2, 3072\) \(it declares dim 1536\)"),
    (Pair(), 3, "gives a tuple as output"),
    (NaNs(), 3, "gives NaN or inf"),
])
def test_refuses_output_that_cannot_be_projected(model, dim, match):
    with pytest.raises(SpecError, match=match) as e:
        check_encoder(_encoder(model, dim, "test:bad"), 384)
    assert one_line(e).endswith("a student must give one floating feature vector per image to be projected "
                                "into the teacher's 384-d space")


def test_build_student_checks_a_registered_encoder(monkeypatch):
    monkeypatch.setitem(specs.MODEL_SCHEMES, "feature-map",
                        specs.Scheme("feature-map", f"{__name__}:feature_map", "image", "feature-map", "test"))
    with pytest.raises(SpecError, match=r"student feature-map gives output of shape \(2, 3, 8, 8\)") as e:
        build_student("feature-map", 16)
    one_line(e)


def feature_map(arg: str = "") -> ModuleEncoder:
    return _encoder(FeatureMap(), 3, "feature-map")


@pytest.mark.parametrize("spec, want", [
    ("timm:resnet18", "timm:resnet18@random"),
    ("timm:resnet50.a1_in1k", "timm:resnet50.a1_in1k@random"),
    ("timm:resnet18@/weights/r18.safetensors#logits", "timm:resnet18@random#logits"),
    ("timm:test_efficientnet@random", "timm:test_efficientnet@random"),
    ("timm:resnet18.a1_in1k#logits?size=64", "timm:resnet18.a1_in1k@random#logits?size=64"),
    ("timm:mobilenetv3_small_100@random?size=32", "timm:mobilenetv3_small_100@random?size=32"),
    ("torchvision:resnet18", "torchvision:resnet18@random"),
    ("student-cnn:width=32,size=64,seed=0,depth=2", "student-cnn:width=32,size=64,seed=0,depth=2"),
    ("student-vit:dim=64", "student-vit:dim=64"),
    ("effnet-lite0", "effnet-lite0"),
    ("onnx:/models/x.onnx#features", "onnx:/models/x.onnx#features"),
])
def test_architecture_spec(spec, want):
    assert architecture_spec(spec) == want


@pytest.mark.parametrize("spec", ["student-cnn:width=8,depth=1", "student-vit:dim=32,depth=2,heads=2"])
def test_student_runs_in_onnxruntime(spec):
    student = build_student(spec, 24)
    fast = accelerate(student, "onnx")
    assert isinstance(fast, OnnxImageEncoder) and fast.dim == 24 and fast.torch_encoder is student
    x = probe_batch(student.image_transform, 5, seed=1)
    torch.testing.assert_close(fast.encode_image(x), student.encode_image(x), atol=1e-4, rtol=0)


# --- distill run folders -------------------------------------------------------------------------

STUDENT = "student-cnn:width=8,depth=1,seed=3"


def trained_student() -> Student:
    """A student whose weights differ from a fresh build (a stand-in for training)."""
    student = build_student(STUDENT, TEACHER_DIM).train()
    student(probe_batch(student.image_transform, 4, seed=2))  # moves BatchNorm's running statistics
    with torch.no_grad():
        student.head.bias.add_(0.5)
    return student.eval()


def write_distill_run(out, student: Student, state: dict[str, torch.Tensor] | None = None):
    state = state if state is not None else {f"student.{k}": v for k, v in student.state_dict().items()}
    config = {"kind": "student", "student": STUDENT, "teacher": TEACHER,
              "dims": {"teacher": TEACHER_DIM, "student": student.encoder.dim}}
    with RunWriter(out) as run:
        run.finish(config, state, "# distilled student\n")
    return out


def test_run_folder_round_trip(tmp_path):
    student = trained_student()
    out = write_distill_run(tmp_path / "run", student)
    vlm = load(f"run:{out}")
    assert isinstance(vlm, TowersVLM) and vlm.dim == TEACHER_DIM and vlm.spec.startswith(f"run:{out}@")
    assert vlm.image.spec == vlm.spec + "/image" and isinstance(vlm.image, Student)
    x = probe_batch(vlm.image_transform, 3, seed=4)
    torch.testing.assert_close(vlm.encode_image(x), student.encode_image(x), atol=1e-6, rtol=0)
    texts = ["a photo of a cat", "a drawing of a dog"]
    torch.testing.assert_close(vlm.encode_text(texts), load(TEACHER).encode_text(texts))

    fast = load_run(str(out), runtime="onnx")
    assert isinstance(fast.image, OnnxImageEncoder) and fast.image.spec == vlm.spec + "/image"
    torch.testing.assert_close(fast.encode_image(x), student.encode_image(x), atol=1e-4, rtol=0)


def test_damaged_run_is_a_cache_mismatch(tmp_path):
    student = trained_student()
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    missing = {k: v for k, v in state.items() if k != "student.head.bias"}
    with pytest.raises(CacheMismatch, match="the run is damaged or from another student") as e:
        load(f"run:{write_distill_run(tmp_path / 'missing', student, missing)}")
    assert "student.head.bias" not in one_line(e) and "head.bias" in one_line(e)
    reshaped = {**state, "student.head.bias": torch.zeros(TEACHER_DIM + 1)}
    with pytest.raises(CacheMismatch, match="damaged or from another student"):
        load(f"run:{write_distill_run(tmp_path / 'reshaped', student, reshaped)}")


def test_run_with_another_teacher_is_a_cache_mismatch(tmp_path):
    student = build_student(STUDENT, 16)  # a 16-d head, recorded as such, but tiny-clip gives 32-d
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    config = {"kind": "student", "student": STUDENT, "teacher": TEACHER, "dims": {"teacher": 16, "student": 96}}
    with RunWriter(tmp_path / "run") as run:
        run.finish(config, state, "# distilled student\n")
    with pytest.raises(CacheMismatch, match="teacher tiny-clip:seed=0 gives 32-d") as e:
        load(f"run:{tmp_path / 'run'}")
    one_line(e)
