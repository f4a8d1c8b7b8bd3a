"""The shared training loop: checkpoints, exact resume, refusals, NaN stops, evaluation rows, precision."""
from __future__ import annotations

import errno
import json

import pytest
import torch
from torch import nn

from zeroshift.errors import CacheError, CacheMismatch, ZeroshiftError
from zeroshift.train import Checkpoints, TrainConfig, plot_eval, plot_history, train


class Task(nn.Module):
    """Regression with BatchNorm (buffers) and dropout (global RNG), so resume must restore both."""

    def __init__(self, fail_at: int | None = None, nan_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        self.calls, self.fail_at, self.nan_at = 0, fail_at, nan_at

    def step(self, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt  # a kill between two steps
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return {"mse": loss}, {"calls": float(self.calls)}


class Batches:
    """Seeded per epoch; supports from_batch like a method's batch source."""

    def __init__(self, epoch: int, n: int = 6) -> None:
        g = torch.Generator().manual_seed(100 + epoch)
        self.items = [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def from_batch(self, index: int):
        return iter(self.items[index:])


CFG = TrainConfig(epochs=3, lr=0.05, warmup=0.1, log_every=2, device="cpu")
ID = {"student": "a", "teacher": "b"}


def _weights(task: Task) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in task.state_dict().items()}


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    whole = Task()
    history = train(whole, Batches, CFG, tmp_path / "a", progress=False, evaluate=lambda: {"acc": 0.5})
    ckpt = Checkpoints(tmp_path / "ckpt", ID, every=4)
    killed = Task(fail_at=11)  # killed mid-epoch 1, after the step-8 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(killed, Batches, CFG, tmp_path / "b", progress=False, checkpoints=ckpt, evaluate=lambda: {"acc": 0.5})
    assert ckpt.exists() and torch.load(ckpt.path, weights_only=True)["step"] == 8
    resumed = Task()
    again = train(resumed, Batches, CFG, tmp_path / "c", progress=False, checkpoints=Checkpoints(tmp_path / "ckpt", ID, 4),
                  evaluate=lambda: {"acc": 0.5})
    for k, v in _weights(whole).items():
        assert torch.equal(v, _weights(resumed)[k]), k
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "calls")} for r in history]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "calls")} for r in again] == strip
    lines = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in history]  # no duplicated rows after the resume
    assert sum("eval/acc" in r for r in history) == 3


def test_resume_refuses_another_run(tmp_path):
    ckpt = Checkpoints(tmp_path / "ckpt", ID, every=3)
    train(Task(), Batches, TrainConfig(epochs=1, device="cpu"), progress=False, checkpoints=ckpt)
    other = Checkpoints(tmp_path / "ckpt", {**ID, "teacher": "c"})
    with pytest.raises(CacheMismatch, match="teacher"):
        train(Task(), Batches, TrainConfig(epochs=1, device="cpu"), progress=False, checkpoints=other)
    with pytest.raises(CacheMismatch, match="steps"):
        train(Task(), Batches, TrainConfig(epochs=2, device="cpu"), progress=False,
              checkpoints=Checkpoints(tmp_path / "ckpt", ID))
    (tmp_path / "ckpt" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CacheError, match="damaged"):
        Checkpoints(tmp_path / "ckpt", ID).load()


def test_nan_stops_naming_step_and_keeps_last_checkpoint(tmp_path):
    ckpt = Checkpoints(tmp_path / "ckpt", ID, every=2)
    with pytest.raises(ZeroshiftError, match=r"step 5 \(epoch 0, batch 4\).*checkpoint \(step 4\)"):
        train(Task(nan_at=5), Batches, CFG, progress=False, checkpoints=ckpt)
    state = Checkpoints(tmp_path / "ckpt", ID).load()
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["task"].values() if v.is_floating_point())


def test_full_disk_keeps_last_complete_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path / "ckpt", ID, every=2)
    real_save = torch.save

    def full(obj, f, *a, **k):
        if obj["step"] >= 4:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ZeroshiftError, match="disk is full.*step 2"):
        train(Task(), Batches, CFG, progress=False, checkpoints=ckpt)
    monkeypatch.setattr(torch, "save", real_save)
    assert Checkpoints(tmp_path / "ckpt", ID).load()["step"] == 2
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.pt"]  # no temp file left


def test_plots_and_precision(tmp_path):
    history = train(Task(), Batches, TrainConfig(epochs=2, precision="bf16", device="cpu"), progress=False,
                    evaluate=lambda: {"acc1": 0.25, "agreement": 0.5})
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history if "loss" in r)
    assert plot_history(history, tmp_path / "loss.png").stat().st_size > 1000
    assert plot_eval(history, tmp_path / "eval.png").stat().st_size > 1000
    assert plot_eval([r for r in history if "loss" in r], tmp_path / "none.png") is None
    with pytest.raises(ZeroshiftError, match="CUDA"):
        train(Task(), Batches, TrainConfig(precision="fp16", device="cpu"), progress=False)
    with pytest.raises(ZeroshiftError, match="precision"):
        TrainConfig(precision="fp8")


def test_adamw_decays_matrices_only():
    from zeroshift.train.loop import make_optimizer

    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    scale = nn.Parameter(torch.tensor(3.9))  # a logit scale
    params = [*net.parameters(), scale]
    groups = make_optimizer(params, TrainConfig(weight_decay=0.1)).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net[0].weight), id(net[2].weight)}
    assert sum(len(g["params"]) for g in groups) == len(params)
    sgd = make_optimizer(params, TrainConfig(weight_decay=5e-4, optimizer="sgd")).param_groups
    assert [g["weight_decay"] for g in sgd] == [5e-4]  # Text-to-Concept's recipe decays every weight
