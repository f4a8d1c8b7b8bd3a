"""models/cost.py: parameters, multiply-adds and images per second of an image path, and the card's table."""
from __future__ import annotations

import time

import pytest
import torch
from helpers import export_onnx, one_line
from torch import nn

from zeroshift import load
from zeroshift.compose import build_student
from zeroshift.errors import ZeroshiftError
from zeroshift.models.cost import cost_rows, human, image_cost
from zeroshift.models.runtime import accelerate
from zeroshift.models.student import Student, create_vit
from zeroshift.models.transforms import resize_crop
from zeroshift.models.vlm import ModuleEncoder

pytestmark = pytest.mark.usefixtures("home", "one_thread")


@pytest.fixture
def one_thread():
    """One intra-op thread, as in test_student_sizes.py: two wait on each other on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ConvPool(nn.Module):
    """A 3x3 conv to 8 channels (no bias) and global pooling, beside a classifier it never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.unused = nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))  # [N, 8]


def _tiny() -> ModuleEncoder:
    torch.manual_seed(0)
    return ModuleEncoder(ConvPool(), 8, resize_crop(16), "test:conv-pool").eval()


def test_counts_multiply_adds_and_the_weights_a_pass_reads():
    student = Student(_tiny(), 4)
    cost = image_cost(student, measure_speed=False)
    assert cost["macs"] == 8 * 3 * 9 * 16 * 16 + 8 * 4  # conv at every pixel, then the 8 -> 4 head
    assert cost["parameters"] == 8 * 3 * 9 + 8 * 4 + 4  # the unused classifier is not read
    assert cost["stored_parameters"] == cost["parameters"] + 8 * 1000 + 1000
    assert cost["input"] == [3, 16, 16] and cost["images_per_second"] is None and cost["runtime"] == "torch"


def test_attention_is_counted():
    dim, depth, heads, patch, size = 32, 2, 2, 8, 32
    enc = create_vit(f"dim={dim},depth={depth},heads={heads},patch={patch},size={size}")
    tokens = 1 + (size // patch) ** 2
    per_block = 4 * tokens * dim * dim + 2 * tokens * dim * dim + 2 * tokens * tokens * dim  # qkv+out, mlp, attention
    embed = (size // patch) ** 2 * dim * 3 * patch * patch
    assert image_cost(enc, measure_speed=False)["macs"] == embed + depth * per_block
    assert torch.backends.mha.get_fastpath_enabled()  # put back after counting


def test_speed_is_measured_quickly_and_leaves_the_model_as_it_was():
    student = build_student("student-cnn:s", 32).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    threads = torch.get_num_threads()
    start = time.perf_counter()
    cost = image_cost(student, seconds=0.2)
    assert time.perf_counter() - start < 5  # a warm-up batch, then ~0.2 s of timed batches of 32
    assert cost["images_per_second"] > 0 and cost["batch"] == 32 and cost["threads"] == threads
    assert student.training and torch.get_num_threads() == threads
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # BatchNorm statistics too


def test_a_vlm_is_measured_on_its_image_path():
    vlm = load("tiny-clip:seed=0")
    cost = image_cost(vlm, measure_speed=False)
    assert cost["parameters"] == cost["stored_parameters"] == vlm.cost()["image"]["parameters"]
    tower = image_cost(vlm.image_parts()[0], measure_speed=False)
    assert cost["macs"] >= tower["macs"] > 0 and cost["spec"] == vlm.spec


def test_an_accelerated_tower_is_timed_in_onnxruntime_and_counted_in_pytorch():
    student = build_student("student-cnn:width=8,depth=1,size=32", 16)
    fast = accelerate(student, "onnx")
    eager, onnx = image_cost(student, seconds=0.05), image_cost(fast, seconds=0.05)
    assert onnx["runtime"] == "onnx" and onnx["images_per_second"] > 0
    assert (onnx["macs"], onnx["parameters"]) == (eager["macs"], eager["parameters"])


def test_an_onnx_only_tower_has_no_multiply_add_count(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    file = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "tiny.onnx")
    cost = image_cost(load(f"onnx:{file}"), measure_speed=False)
    assert cost["macs"] is None and cost["parameters"] == 8 * 3 * 9 + 8 and cost["runtime"] == "onnx"


def test_refuses_what_has_no_image_path():
    with pytest.raises(ZeroshiftError, match="cannot measure the cost of a Linear") as e:
        image_cost(nn.Linear(2, 2))
    one_line(e)

    class Whole(type(load("tiny-clip:seed=0"))):
        def image_parts(self):
            raise ZeroshiftError("no parts")

    vlm = load("tiny-clip:seed=0")
    vlm.__class__ = Whole
    with pytest.raises(ZeroshiftError, match="names no separate image path") as e:
        image_cost(vlm)
    one_line(e)


def test_cost_rows_format_the_card_table():
    student = {"input": [3, 64, 64], "parameters": 402_176, "macs": 19_060_000, "images_per_second": 1500.0,
               "batch": 32, "threads": 2, "runtime": "torch"}
    teacher = {"input": [3, 260, 260], "parameters": 6_092_072, "macs": 859_736_272, "images_per_second": 60.0,
               "batch": 32, "threads": 2, "runtime": "onnx"}
    assert cost_rows(student, teacher) == [
        "| | student | teacher image tower | student / teacher |",
        "|---|---|---|---|",
        "| input (channels x height x width) | 3x64x64 | 3x260x260 |  |",
        "| parameters (read per image) | 402.2K | 6.09M | 0.066x |",
        "| multiply-adds per image | 19.06M | 859.74M | 0.0222x |",
        "| images per second (batch 32, 2 threads) | 1,500 (torch) | 60 (onnx) | 25x |",
    ]
    unmeasured = cost_rows(student, {**teacher, "images_per_second": None, "macs": None})
    assert unmeasured[-1] == "| images per second (batch 32, 2 threads) | 1,500 (torch) | - | - |"
    assert unmeasured[-2] == "| multiply-adds per image | 19.06M | - | - |"
    assert "(batch 32, 1 thread)" in cost_rows({**student, "threads": 1}, teacher)[-1]


@pytest.mark.parametrize("n, shown", [(None, "-"), (999, "999"), (67_520, "67.5K"), (1_477_120, "1.48M"),
                                      (1_813_800_000, "1.81G")])
def test_human(n, shown):
    assert human(n) == shown
