"""The loop's speed options: memory_format validated, channels_last trains the same weights as contiguous
and hands them back contiguous, distill's choice of format, and the malloc tuning's effect on page faults."""
from __future__ import annotations

import json
import os
import subprocess
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


MALLOC_SCRIPT = """
import json, os, resource, torch
from zeroshift.train.fast import malloc_tuned

def faults():  # page faults of 8 allocations of 64 MB, each freed at once, after 4 that let the heap grow
    for _ in range(4):
        torch.ones(16 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        torch.ones(16 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

default, before = faults(), resident_mb()
with malloc_tuned() as tuned:
    inside = faults()
    kept = resident_mb()
print(json.dumps({"tuned": tuned, "default": default, "inside": inside, "before": before, "kept": kept,
                  "after": resident_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux only")
def test_malloc_tuned_stops_repeat_page_faults_and_is_undone():
    """In a fresh process (the heap's state is this test process's history otherwise). Undone means the
    heap's kept memory goes back to the OS on exit; whether a later big tensor is mmapped afresh or reuses
    a hole that a small allocation pinned in the heap is glibc's choice, so it is not asserted."""
    done = subprocess.run([sys.executable, "-c", MALLOC_SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["tuned"]
    pages = 16384  # of 4 KB in 64 MB: every allocation faults afresh by default
    assert r["inside"] <= 2 * pages < 8 * pages <= r["default"]  # a small heap re-growth at most
    assert r["kept"] - r["before"] >= 60  # MB: the heap keeps a freed 64 MB tensor while tuned ...
    assert r["after"] - r["before"] <= 16  # ... and returns it on exit
    with malloc_tuned(enabled=False) as tuned:
        assert not tuned


def test_epoch_batches_are_made_on_one_thread_and_the_count_restored():
    from zeroshift.train.batches import Epoch

    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        epoch = Epoch(10, 4, seed=0, epoch=0, make=lambda rows, g: seen.append(torch.get_num_threads()) or rows)
        assert [len(b) for b in epoch] == [4, 4, 2] and seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
