"""The one training loop every method uses.

A method is a `Task`: an nn.Module that owns its trainable parts, its frozen teacher parts and its
losses, and turns one batch into named, weighted loss terms. The loop owns everything else: the
optimizer, the learning-rate schedule (linear warm-up, cosine decay), gradient clipping, the check
for non-finite losses, the progress bar and the metrics log (`metrics.jsonl` in the run folder).
"""
from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed as dist
from ..choices import PRECISIONS
from ..errors import CacheMismatch, ZeroshiftError
from .checkpoint import Checkpoints, rng_state
from .keep import Keeper
from .fast import MEMORY_FORMATS, malloc_tuned, to_format

OPTIMIZERS = ("adamw", "sgd")
METRICS_FILE = "metrics.jsonl"


class Task(Protocol):
    """What the loop trains: `step` gives (weighted loss terms, summed to the total; report floats),
    `parameters()` yields the trainable parameters only (frozen parts are buffers or detached)."""

    def step(self, batch: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    # optional: after_step(self) -> None, called after each optimizer step (EMA teachers)


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
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA) | auto (bf16 on a GPU that has it, else fp32)
    device: str = "auto"  # auto (this rank's GPU, else the CPU) | cpu | cuda | cuda:N
    ema: float = 0.0  # decay of an EMA of the trained weights, scored and kept (0: off); see keep.py
    memory_format: str = "contiguous"  # contiguous | channels_last (weights and 4-d batches; faster for CNNs)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ZeroshiftError(f"unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.lr <= 0 or self.log_every < 1:
            raise ZeroshiftError("epochs and log_every must be at least 1, and the learning rate above 0")
        if self.precision not in PRECISIONS:
            raise ZeroshiftError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ZeroshiftError("warmup must be a fraction in [0, 1); weight decay and grad clip at least 0")
        if not 0 <= self.ema < 1:
            raise ZeroshiftError(f"the EMA decay must be in [0, 1); got {self.ema:g}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ZeroshiftError(f"unknown memory format {self.memory_format!r}; use {' or '.join(MEMORY_FORMATS)}")


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD as the recipe asks (Text-to-Concept decays every weight), or AdamW with decay on matrices and
    kernels only: biases, norm weights and logit scales (parameters with fewer than 2 dims) are not
    decayed, as open_clip and timm do."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """The learning rate at `step` (0-based) of `total`, as a fraction of cfg.lr."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if not cfg.cosine:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is present, else the CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ZeroshiftError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZeroshiftError(f"device {name!r} asked for, but this torch sees no CUDA device; use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name on a device (None: full float32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ZeroshiftError("fp16 mixed precision needs a CUDA device; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` (tensors in dicts, lists and tuples) with every tensor on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class _Forward(nn.Module):
    """A task's `step` as `forward`, so DistributedDataParallel can wrap it and sync its gradients."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def forward(self, batch: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return self.task.step(batch)


def _resume_from(batches: Iterable, index: int) -> Iterator[tuple[int, Any]]:
    """(index, batch) pairs from batch `index` on; uses the iterable's `from_batch(index)` when it has one."""
    if index and hasattr(batches, "from_batch"):
        return enumerate(batches.from_batch(index), start=index)
    return itertools.islice(enumerate(batches), index, None)


class _Log:
    """metrics.jsonl in the run folder (rank 0 only), rewritten from the history on resume."""

    def __init__(self, run_dir: Path | None, history: list[dict]) -> None:
        self.path = None if run_dir is None or dist.rank() != 0 else Path(run_dir) / METRICS_FILE
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")

    def write(self, row: dict) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def train(
    task: Task,
    batches: Callable[[int], Iterable],
    cfg: TrainConfig,
    run_dir: Path | None = None,
    progress: bool = True,
    checkpoints: Checkpoints | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    keep_best: str | tuple[str, ...] | None = None,
    start_scores: dict[str, float] | None = None,
) -> list[dict]:
    """Train `task` on `batches(epoch)` (an iterable with len(): this rank's batches) for cfg.epochs.

    Returns the logged rows {step, epoch, lr, loss, loss/<term>..., <report>..., seconds}, plus one row
    {step, epoch, eval/<metric>...} after each epoch when `evaluate` is given; with a `run_dir`, rows
    also go to run_dir/metrics.jsonl as they are logged. With `checkpoints`, the state is saved every
    `checkpoints.every` steps and at each epoch end, and a run finding a checkpoint of the same run
    resumes from it, giving the same weights as an uninterrupted run, and says so on stderr ("resumed
    from step N of M (OUT.ckpt)"). Batches must depend on the
    epoch (and seed) only. A non-finite loss stops training with a ZeroshiftError naming the step and
    the batch; the last checkpoint saved before it is kept. With `cfg.ema` the weights are averaged
    (keep.py) and the average is what `evaluate` scores and the task holds at the end; with `keep_best`
    (a key of `evaluate`'s dict) the task ends with the weights of the epoch that maximised it, and
    a last row {kept_epoch, kept_by, kept_score} says which (several keys: ties broken by the next;
    `start_scores`: the scores of the weights before training, kept as epoch -1 if no epoch beats them). Under torchrun the gradients are averaged
    over the ranks by DistributedDataParallel; on GPUs BatchNorm layers become SyncBatchNorm (it has no
    CPU kernel, so on CPUs each rank normalises by its own share of the batch). With cfg.memory_format
    channels_last the task's 4-d weights and 4-d batch tensors are laid out NHWC while training (the
    weights come back contiguous); on the CPU glibc keeps freed heap memory meanwhile (train/fast.py).
    """
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    layout = MEMORY_FORMATS[cfg.memory_format]
    task.to(device)
    if layout is not torch.contiguous_format:
        task.to(memory_format=layout)  # 4-d weights (conv kernels) only; back to contiguous at the end
    params = [p for p in task.parameters() if p.requires_grad]
    if not params:
        raise ZeroshiftError("the task has no trainable parameters")
    first = batches(0)
    if not isinstance(first, Sized):
        raise ZeroshiftError("batches(epoch) must return a sized iterable (a list, or an object with __len__)")
    per_epoch = len(first)
    total = cfg.epochs * per_epoch
    if total == 0:
        raise ZeroshiftError("no batches to train on")
    optimizer = make_optimizer(params, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    history: list[dict] = []
    epoch0, index0, step = 0, 0, 0
    saved = None if checkpoints is None else checkpoints.load()
    if saved is not None:
        if int(saved["total"]) != total:
            raise CacheMismatch(f"checkpoint {checkpoints.path} was written for {saved['total']} steps, this run "
                                f"has {total}; pass --no-resume to start over")
        checkpoints.restore(saved, task, optimizer=optimizer, schedule=schedule, scaler=scaler)  # and the RNGs
        epoch0, index0, step = int(saved["epoch"]), int(saved["index"]), int(saved["step"])
        history = json.loads(saved["history"])
        if dist.rank() == 0:  # said even with the bars off: the run did not start over
            print(f"resumed from step {step} of {total} ({checkpoints.folder})", file=sys.stderr, flush=True)
    keeper = Keeper(task, cfg.ema, keep_best if evaluate is not None else None,
                    start_scores if saved is None and evaluate is not None else None)
    if saved is not None and keeper.active:
        checkpoints.restore_part(saved, "keeper", keeper)
    log = _Log(run_dir, history)
    model = task
    if dist.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        dist.init()
        if device.type == "cuda":  # batch statistics over the global batch, as one process computes them
            nn.SyncBatchNorm.convert_sync_batchnorm(task)  # in place below the top; the same parameters
        model = DistributedDataParallel(_Forward(task), device_ids=[device.index] if device.type == "cuda" else None)
    forward = model if model is not task else task.step

    def save(epoch: int, index: int) -> None:
        if checkpoints is not None and dist.rank() == 0:
            checkpoints.save({"task": task.state_dict(), "optimizer": optimizer.state_dict(),
                              "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                              **({"keeper": keeper.state_dict()} if keeper.active else {}),
                              "rng": rng_state(), "epoch": epoch, "index": index, "step": step, "total": total,
                              "history": json.dumps(history)})
        dist.barrier()

    task.train()
    t0 = time.perf_counter() - next((r["seconds"] for r in reversed(history) if "seconds" in r), 0.0)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress or dist.rank() != 0,
               dynamic_ncols=True)
    tuned = malloc_tuned(device.type == "cpu")
    tuned.__enter__()
    try:
        for epoch in range(epoch0, cfg.epochs):
            epoch_batches = first if epoch == 0 else batches(epoch)
            for index, batch in _resume_from(epoch_batches, index0 if epoch == epoch0 else 0):
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    terms, report = forward(_ready(batch, device, layout))
                loss = torch.stack([v.float() for v in terms.values()]).sum()
                if not _finite_everywhere(loss):
                    bad = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                    raise ZeroshiftError(
                        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {index}): {bad or 'on another rank'}"
                        f"{_kept(checkpoints)}; lower the learning rate or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                if hasattr(task, "after_step"):  # e.g. an EMA teacher following the trained weights
                    task.after_step()
                keeper.after_step()
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step == 1 or step % cfg.log_every == 0 or step == total:
                    row = {"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(),
                           **{f"loss/{k}": v.item() for k, v in terms.items()}, **report,
                           "seconds": round(time.perf_counter() - t0, 3)}
                    history.append(row)
                    log.write(row)
                if checkpoints is not None and checkpoints.every and step % checkpoints.every == 0 \
                        and index + 1 < per_epoch:
                    save(epoch, index + 1)
            if evaluate is not None:
                task.train(False)
                with keeper.applied():  # the EMA weights are the ones scored and kept
                    metrics = evaluate() if dist.rank() == 0 else {}
                    keeper.epoch_end(epoch, metrics)
                task.train()
                if metrics:
                    row = {"step": step, "epoch": epoch, **{f"eval/{k}": float(v) for k, v in metrics.items()}}
                    history.append(row)
                    log.write(row)
                    if progress:  # --quiet: the summary says what was kept
                        bar.write("epoch " + str(epoch) + ": " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            save(epoch + 1, 0)
        kept = keeper.finish()
        if kept is not None:
            history.append({"step": step, "epoch": cfg.epochs - 1, **kept})
            log.write(history[-1])
    finally:
        tuned.__exit__(None, None, None)
        bar.close()
        task.train(False)
        if layout is not torch.contiguous_format:
            task.to(memory_format=torch.contiguous_format)  # what safetensors and export expect
    return history


def _ready(batch: Any, device: torch.device, layout: torch.memory_format) -> Any:
    """`batch` on `device`, its 4-d tensors in `layout` when that is not the default."""
    batch = to_device(batch, device)
    return batch if layout is torch.contiguous_format else to_format(batch, layout)


def _kept(checkpoints: Checkpoints | None) -> str:
    if checkpoints is None:
        return ""
    if checkpoints.saved_step is None:
        return "; no checkpoint had been saved yet"
    return f"; the last good checkpoint (step {checkpoints.saved_step}) is kept in {checkpoints.folder}"


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (so that all ranks stop together)."""
    return bool(dist.all_min(torch.isfinite(loss.detach()).float()).item())


def plot_history(history: list[dict], path: Path, title: str = "training") -> Path:
    """A PNG of the loss and its terms against the step (and any reported values on a second panel)."""
    rows = [r for r in history if "loss" in r]
    losses = [k for k in rows[0] if k == "loss" or k.startswith("loss/")] if rows else []
    skip = {"step", "epoch", "lr", "seconds", *losses}
    reports = [k for k in (rows[0] if rows else {}) if k not in skip]
    panels = [(losses, "loss", title)] + ([(reports, "reported", "reported")] if reports else [])
    return _plot(rows, panels, "step", path, log_scale=True)


def plot_eval(history: list[dict], path: Path, title: str = "held-out evaluation") -> Path | None:
    """A PNG of the per-epoch evaluation metrics against the epoch; None when there are none."""
    rows = [r for r in history if any(k.startswith("eval/") for k in r)]
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval/")))
    return _plot(rows, [(keys, "value", title)], "epoch", path, log_scale=False)


def _plot(rows: list[dict], panels: list[tuple[list[str], str, str]], x: str, path: Path, log_scale: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 5 * len(panels) - 4 * (len(panels) == 1), 4), squeeze=False)
    for ax, (keys, ylabel, title) in zip(axes[0], panels):
        for key in keys:
            points = [(r[x], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points) if points else ([], []), label=key, lw=2 if key == "loss" else 1,
                    marker="o" if x == "epoch" else None)
        ax.set(xlabel=x, ylabel=ylabel, title=title)
        values = [r[k] for r in rows for k in keys if k in r]
        if log_scale and ylabel == "loss" and values and all(v > 0 for v in values):
            ax.set_yscale("log")
        if keys:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
