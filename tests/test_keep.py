"""What a run keeps: the EMA of its weights and the best epoch by a held-out score, also across a resume."""
from __future__ import annotations

import pytest
import torch

from test_train_loop import Batches, Task, _weights
from zeroshift.errors import ZeroshiftError
from zeroshift.train import Checkpoints, TrainConfig, train
from zeroshift.train.keep import trained_state

CFG = TrainConfig(epochs=3, lr=0.05, warmup=0.1, log_every=2, device="cpu")


class Recording(Task):
    """Records the trained tensors after every optimizer step."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.after = []

    def after_step(self) -> None:
        self.after.append({k: v.detach().clone() for k, v in trained_state(self).items()})


def test_trained_state_is_the_trained_part_only():
    task = Task()
    task.register_buffer("frozen", torch.ones(3))  # a teacher's buffer beside the trained net
    names = set(trained_state(task))
    assert "frozen" not in names and "net.1.running_mean" in names and "net.0.weight" in names


def test_ema_is_the_average_of_the_trained_weights():
    task = Recording()
    start = {k: v.detach().clone() for k, v in trained_state(task).items()}
    cfg = TrainConfig(**{**CFG.__dict__, "ema": 0.9})
    train(task, Batches, cfg, progress=False)
    shadow = start
    for t, after in enumerate(task.after, start=1):
        d = min(0.9, (1 + t) / (10 + t))
        shadow = {k: (s.lerp(after[k], 1 - d) if s.is_floating_point() else after[k]) for k, s in shadow.items()}
    final = trained_state(task)
    for k, v in shadow.items():
        assert torch.allclose(final[k], v, atol=1e-6), k
    assert not torch.allclose(final["net.0.weight"], task.after[-1]["net.0.weight"])  # not the last weights


def test_keep_best_ends_with_the_best_epochs_weights():
    task, scores, seen = Task(), iter([0.2, 0.7, 0.4]), []

    def evaluate():
        seen.append({k: v.clone() for k, v in trained_state(task).items()})
        return {"agreement": next(scores)}

    history = train(task, Batches, CFG, progress=False, evaluate=evaluate, keep_best="agreement")
    for k, v in trained_state(task).items():
        assert torch.equal(v, seen[1][k]), k
    assert history[-1]["kept_epoch"] == 1 and history[-1]["kept_score"] == pytest.approx(0.7)


def test_keep_and_ema_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "ema": 0.8})

    def scores():
        it = iter([0.3, 0.9, 0.1])
        return lambda: {"agreement": next(it)}

    whole = Task()
    history = train(whole, Batches, cfg, progress=False, evaluate=scores(), keep_best="agreement")
    killed = Task(fail_at=15)  # killed in epoch 2, after the epoch-1 checkpoint holding the best weights
    ident = {"run": "keep"}
    resumed_scores = scores()
    with pytest.raises(KeyboardInterrupt):
        train(killed, Batches, cfg, progress=False, checkpoints=Checkpoints(tmp_path / "c", ident, 4),
              evaluate=resumed_scores, keep_best="agreement")
    again = Task()
    out = train(again, Batches, cfg, progress=False, checkpoints=Checkpoints(tmp_path / "c", ident, 4),
                evaluate=resumed_scores, keep_best="agreement")
    for k, v in _weights(whole).items():
        assert torch.equal(v, _weights(again)[k]), k
    assert out[-1]["kept_epoch"] == history[-1]["kept_epoch"] == 1


def test_bad_ema_is_one_line():
    with pytest.raises(ZeroshiftError, match="EMA decay"):
        TrainConfig(ema=1.0)
