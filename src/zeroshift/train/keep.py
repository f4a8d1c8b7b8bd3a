"""Which weights a run keeps: an exponential moving average of the trained weights (option), and the
best epoch by a held-out metric (option), both saved in checkpoints so a resumed run keeps the same.

Patient schedules (Beyer et al. 2022) overfit a small fit set in the end; the label-free held-out split
(methods/holdout.py) says when, and the run keeps that epoch's weights instead of the last. The EMA
(Polyak averaging, as timm's ModelEma) smooths the last epochs of a long schedule; with both, the
averaged weights are the ones scored and kept.

Only the trained part of a task is tracked: the parameters that take gradients and the buffers of the
modules that hold them (BatchNorm statistics), never the frozen teacher parts beside them.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import ZeroshiftError


def trained_state(task: nn.Module) -> dict[str, torch.Tensor]:
    """The task's trained tensors by state_dict name: trainable parameters and their modules' buffers."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in task.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        dot = f"{prefix}." if prefix else ""
        for name, p in module.named_parameters(recurse=False):
            out[dot + name] = p
        for name, b in module.named_buffers(recurse=False):
            if b is not None:
                out[dot + name] = b
    return out


class Keeper:
    """EMA of the trained weights when `ema` > 0 (decay, warmed up as (1 + t) / (10 + t) so short runs
    average too), and the best epoch by `metric` (a key of the evaluation's dict, maximised) when given."""

    def __init__(self, task: nn.Module, ema: float = 0.0, metric: str | tuple[str, ...] | None = None,
                 start: dict[str, float] | None = None) -> None:
        """`metric`: a key of the evaluation's dict, or several compared in order (ties broken by the next);
        `start`: the scores of the weights before training (e.g. a closed-form warm start), a candidate
        too, as epoch -1."""
        if not 0 <= ema < 1:
            raise ZeroshiftError(f"the EMA decay must be in [0, 1); got {ema:g}")
        self.task, self.decay = task, float(ema)
        self.metric = (metric,) if isinstance(metric, str) else (tuple(metric) if metric else None)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in trained_state(task).items()} if ema > 0 else None
        self.best: dict[str, torch.Tensor] | None = None
        self.best_score: tuple[float, ...] | None = None
        self.best_epoch = -1
        if start is not None:
            self.epoch_end(-1, start)

    @property
    def active(self) -> bool:
        return self.shadow is not None or self.metric is not None

    @torch.no_grad()
    def after_step(self) -> None:
        if self.shadow is None:
            return
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in trained_state(self.task).items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().to(s.dtype), 1 - d)
            else:
                s.copy_(v)  # e.g. BatchNorm's num_batches_tracked

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA weights in the task for the block (the trained ones when there is no EMA)."""
        if self.shadow is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in trained_state(self.task).items()}
        _load(self.task, self.shadow)
        try:
            yield
        finally:
            _load(self.task, live)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record an epoch's evaluation (called inside `applied`); True when it is the best so far."""
        if self.metric is None or any(m not in metrics for m in self.metric):
            return False
        score = tuple(float(metrics[m]) for m in self.metric)
        if self.best_score is not None and score <= self.best_score:
            return False  # ties keep the earlier epoch
        self.best_score, self.best_epoch = score, epoch
        self.best = {k: v.detach().clone() for k, v in trained_state(self.task).items()}
        return True

    def finish(self) -> dict[str, Any] | None:
        """Load the kept weights into the task: the best epoch's, else the EMA; what was kept, or None."""
        if self.best is not None:
            _load(self.task, self.best)
            return {"kept_epoch": self.best_epoch, "kept_by": self.metric[0], "kept_score": self.best_score[0],
                    "ema": self.decay}
        if self.shadow is not None:
            _load(self.task, self.shadow)
            return {"kept_epoch": None, "kept_by": "ema", "ema": self.decay}
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": self.shadow or {}, "best": self.best or {},
                "best_score": list(self.best_score or ()), "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ours = set(trained_state(self.task))
        for part in ("shadow", "best"):
            theirs = state.get(part) or {}
            if theirs and set(theirs) != ours:
                raise ValueError(f"its kept {part} weights have other names than this run's model")
        self.updates = int(state["updates"])
        if self.shadow is not None:
            if not state["shadow"]:
                raise ValueError("it holds no EMA weights but this run averages them")
            self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.best = {k: v.clone() for k, v in state["best"].items()} or None
        self.best_score = tuple(float(x) for x in state["best_score"]) or None
        self.best_epoch = int(state["best_epoch"])


@torch.no_grad()
def _load(task: nn.Module, values: dict[str, torch.Tensor]) -> None:
    for k, t in trained_state(task).items():
        t.copy_(values[k].to(t.device, t.dtype))
