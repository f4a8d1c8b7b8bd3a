"""The loop's speed options: memory_format validated, channels_last trains the same weights as contiguous
and hands them back contiguous, distill's choice of format, and the malloc tuning's effect on page faults."""
from __future__ import annotations

import resource
import sys

import pytest
import torch
from torch import nn

from zeroshift.errors import ZeroshiftError
from zeroshift.models.student import create_cnn, create_vit
from zeroshift.train import TrainConfig, train
from zeroshift.train.fast import malloc_tuned, preferred_format, to_format


class ConvTask(nn.Module):
    """A depthwise-separable conv net with BatchNorm (no bias before it: AdamW would turn that bias's zero
    gradient's rounding noise into full steps); records the layout of the batches it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                                 nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.layouts: list[bool] = []

    def step(self, batch):
        x, y = batch
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return {"mse": ((self.net(x) - y) ** 2).mean()}, {}


def _batches(epoch: int) -> list:
    g = torch.Generator().manual_seed(epoch)
    return [(torch.randn(6, 3, 12, 12, generator=g), torch.randn(6, 4, generator=g)) for _ in range(4)]


def test_unknown_memory_format_is_refused():
    with pytest.raises(ZeroshiftError, match="unknown memory format 'nhwc'"):
        TrainConfig(memory_format="nhwc")


def test_channels_last_trains_the_same_weights_and_returns_them_contiguous():
    runs = {}
    for fmt in ("contiguous", "channels_last"):
        task = ConvTask()
        history = train(task, _batches, TrainConfig(epochs=2, lr=0.05, log_every=1, device="cpu", memory_format=fmt),
                        progress=False)
        runs[fmt] = task, [r["loss"] for r in history]
        assert set(task.layouts) == {fmt == "channels_last"}  # the batches reached the task in that layout
        assert all(v.is_contiguous() for v in task.state_dict().values())
    (a, loss_a), (b, loss_b) = runs["contiguous"], runs["channels_last"]
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5, msg=name)


def test_to_format_converts_4d_tensors_only():
    batch = {"pixels": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "target": torch.zeros(2, 5), "n": 3}
    out = to_format(batch, torch.channels_last)
    assert out["pixels"].is_contiguous(memory_format=torch.channels_last) and not out["pixels"].is_contiguous()
    assert out["target"] is batch["target"] and out["n"] == 3


def test_distill_picks_channels_last_for_grouped_conv_students_only():
    assert preferred_format(create_cnn("width=8,size=32")) == "channels_last"
    assert preferred_format(create_vit("dim=16,depth=1,heads=2,patch=8,size=16")) == "contiguous"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux only")
def test_malloc_tuned_keeps_big_tensors_from_faulting_again():
    def faults_of_second_allocation() -> int:
        torch.ones(16 << 20)  # 64 MB, freed at once: mmapped and unmapped by default glibc
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with malloc_tuned() as tuned:
        inside = faults_of_second_allocation()
    outside = faults_of_second_allocation()
    assert tuned
    assert inside < 1000 < outside  # 64 MB is 16384 pages of 4 KB
    with malloc_tuned(enabled=False) as tuned:
        assert not tuned
