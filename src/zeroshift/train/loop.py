"""The one training loop every method uses.

A method is a `Task`: an nn.Module that owns its trainable parts, its frozen teacher parts and its
losses, and turns one batch into named, weighted loss terms. The loop owns everything else: the
optimizer, the learning-rate schedule (linear warm-up, cosine decay), gradient clipping, the check
for non-finite losses, the progress bar and the metrics log (`metrics.jsonl` in the run folder).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ZeroshiftError

OPTIMIZERS = ("adamw", "sgd")
METRICS_FILE = "metrics.jsonl"


class Task(Protocol):
    """What the loop trains: `step` gives (weighted loss terms, summed to the total; report floats),
    `parameters()` yields the trainable parameters only (frozen parts are buffers or detached)."""

    def step(self, batch: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation options shared by every method."""

    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd (with `momentum`)
    momentum: float = 0.9
    warmup: float = 0.0  # fraction of all steps with a linear ramp from 0 to lr
    cosine: bool = True  # cosine decay to 0 after the warm-up, else a constant lr
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    seed: int = 0
    log_every: int = 10  # steps between metrics lines (the first and last step are always logged)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ZeroshiftError(f"unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.lr <= 0 or self.log_every < 1:
            raise ZeroshiftError("epochs and log_every must be at least 1, and the learning rate above 0")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ZeroshiftError("warmup must be a fraction in [0, 1); weight decay and grad clip at least 0")


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """The learning rate at `step` (0-based) of `total`, as a fraction of cfg.lr."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if not cfg.cosine:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(
    task: Task,
    batches: Callable[[int], Iterable],
    cfg: TrainConfig,
    run_dir: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train `task` on `batches(epoch)` (an iterable with len()) for cfg.epochs epochs.

    Returns the logged rows {step, epoch, lr, loss, loss/<term>..., <report>..., seconds}; with a
    `run_dir`, each row is also appended to run_dir/metrics.jsonl as it is logged. A non-finite loss
    stops training with a ZeroshiftError naming the step and the batch.
    """
    torch.manual_seed(cfg.seed)
    params = [p for p in task.parameters() if p.requires_grad]
    if not params:
        raise ZeroshiftError("the task has no trainable parameters")
    first = batches(0)
    if not isinstance(first, Sized):
        raise ZeroshiftError("batches(epoch) must return a sized iterable (a list, or an object with __len__)")
    total = cfg.epochs * len(first)
    if total == 0:
        raise ZeroshiftError("no batches to train on")
    optimizer = make_optimizer(params, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))
    log = None if run_dir is None else Path(run_dir) / METRICS_FILE
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    task.train()
    step, t0 = 0, time.perf_counter()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(cfg.epochs):
            for index, batch in enumerate(first if epoch == 0 else batches(epoch)):
                terms, report = task.step(batch)
                loss = torch.stack(list(terms.values())).sum()
                if not torch.isfinite(loss):
                    bad = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                    raise ZeroshiftError(
                        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {index}): {bad}; "
                        "lower the learning rate or check the features")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                schedule.step()
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step == 1 or step % cfg.log_every == 0 or step == total:
                    row = {"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(),
                           **{f"loss/{k}": v.item() for k, v in terms.items()}, **report,
                           "seconds": round(time.perf_counter() - t0, 3)}
                    history.append(row)
                    if log is not None:
                        with open(log, "a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
    finally:
        bar.close()
        task.train(False)
    return history


def plot_history(history: list[dict], path: Path, title: str = "training") -> Path:
    """A PNG of the loss and its terms against the step (and any reported values on a second panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"step", "epoch", "lr", "seconds"}
    losses = [k for k in history[0] if k == "loss" or k.startswith("loss/")] if history else []
    reports = [k for k in (history[0] if history else {}) if k not in skip and k not in losses]
    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 2 if reports else 1, figsize=(10 if reports else 6, 4), squeeze=False)
    for key in losses:
        axes[0, 0].plot(steps, [r[key] for r in history], label=key, lw=2 if key == "loss" else 1)
    axes[0, 0].set(xlabel="step", ylabel="loss", title=title)
    if losses and all(r[k] > 0 for r in history for k in losses):
        axes[0, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    for key in reports:
        axes[0, 1].plot(steps, [r[key] for r in history], label=key)
    if reports:
        axes[0, 1].set(xlabel="step", title="reported")
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
