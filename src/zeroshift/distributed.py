"""Running under `torchrun`: who am I, how many are we, wait for everyone, and the collectives the
cache, the training loop and the losses share (gathers and reductions that keep gradients).

Outside torchrun (no RANK/WORLD_SIZE in the environment) every helper answers as a single
process and `barrier` does nothing, so one process behaves exactly as it would without them.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import ZeroshiftError
from . import version


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else default


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if _initialized() else _env_int("RANK", 0)


def world_size() -> int:
    """How many processes take part (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's rank on its own machine (picks its GPU)."""
    return _env_int("LOCAL_RANK", 0)


def is_distributed() -> bool:
    """True under torchrun (or any launcher setting RANK/WORLD_SIZE) with more than one process."""
    return world_size() > 1


def timeout_s() -> float:
    """How long a rank waits for the others ($ZEROSHIFT_DIST_TIMEOUT seconds, default 600)."""
    value = os.environ.get("ZEROSHIFT_DIST_TIMEOUT", "")
    try:
        return float(value) if value.strip() else 600.0
    except ValueError:
        raise ZeroshiftError(f"ZEROSHIFT_DIST_TIMEOUT must be a number of seconds, not {value!r}") from None


def init() -> None:
    """Initialise the default process group from the environment if nobody has yet, then check that
    every rank runs the same zeroshift and torch.

    gloo serves CPU tensors; where CUDA is present NCCL serves GPU tensors in the same group, so a
    later DDP run reuses it (a destroyed default group cannot be re-created under torchrun's store).
    A rendezvous that does not complete within timeout_s() (a wrong world size, address or port) is a
    one-line error instead of a hang.
    """
    if _initialized() or not is_distributed():
        return
    where = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    timeout = datetime.timedelta(seconds=timeout_s())
    try:
        if torch.cuda.is_available():
            if local_rank() >= torch.cuda.device_count():
                raise ZeroshiftError(f"LOCAL_RANK={local_rank()} needs GPU {local_rank()}, but this machine has "
                                     f"{torch.cuda.device_count()}: start at most one process per GPU "
                                     f"(torchrun --nproc_per_node={torch.cuda.device_count()})")
            torch.cuda.set_device(local_rank())
            dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    except (ValueError, RuntimeError) as e:  # missing variables; the store's timeout (DistStoreError)
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ZeroshiftError(f"could not join the torch.distributed group ({where}): {reason}; launch with "
                             "torchrun --nproc_per_node=N (and --nnodes/--rdzv-endpoint across machines)") from None
    check_versions()


def check_versions() -> None:
    """ZeroshiftError on every rank when the ranks do not all run the same zeroshift and torch versions."""
    mine = {"zeroshift": version.__version__, "torch": torch.__version__}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for rank_, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            raise ZeroshiftError(f"ranks run different library versions: rank 0 has {everyone[0]}, rank {rank_} has "
                                 f"{theirs}; install the same zeroshift and torch on every machine")


def barrier() -> None:
    """Wait until every rank gets here (initialising the process group if needed); no-op alone."""
    if not is_distributed():
        return
    init()
    dist.barrier()


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks in place (no gradients); nothing to do in one process."""
    if not is_distributed():
        return
    init()
    for t in tensors:
        dist.all_reduce(t)


def all_min(x: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum of `x` over the ranks (no gradients); `x` itself in one process."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x


def global_mean(p: torch.Tensor) -> torch.Tensor:
    """A per-rank batch mean made the mean over the global batch (ranks hold equal shares); gradients
    flow back to every rank's rows."""
    if not is_distributed():
        return p
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(p) / world_size()


class _AllGather(torch.autograd.Function):
    """all_gather that keeps gradients: the backward sums every rank's gradient of the gathered tensor
    (all_reduce) and hands each rank its own slot, as torch.distributed.nn's all_gather does, but on
    all_reduce alone, which every backend (gloo included) runs natively."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # x [width, ...] -> [world, width, ...]
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # grad [world, width, ...]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank]


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's x ([sizes[r], ...] on rank r) into [sum(sizes), ...]; keeps gradients."""
    width = max(sizes)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, width - x.shape[0]))  # [width, ...]
    if padded.requires_grad and torch.is_grad_enabled():
        parts = list(_AllGather.apply(padded))  # world x [width, ...]
    else:
        parts = [torch.empty_like(padded) for _ in sizes]  # world x [width, ...]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])  # [sum(sizes), ...]


def gather_rows(*tensors: torch.Tensor | None) -> tuple[tuple[torch.Tensor | None, ...], slice]:
    """All-gather row-aligned tensors over the default process group, keeping gradients; returns them and
    this rank's rows in the gathered batch.

    Every tensor is [n, ...] with the same n on a rank (n may differ between ranks); None stays None and must
    be None on every rank. Single process (no group, or world 1): the tensors themselves and slice(0, n).
    A loss over the global batch for this rank's rows (logits [n, G] against gathered columns):

        (img_g, txt_g), rows = gather_rows(img, txt)
        logits = img @ txt_g.T  # [n, G]; the positives of this rank's rows are columns `rows`
    """
    present = [t for t in tensors if t is not None]
    if not present:
        raise ZeroshiftError("gather_rows: give at least one tensor to gather")
    if any(t.dim() == 0 for t in present):
        raise ZeroshiftError("gather_rows: every tensor must be [n, ...], one row per pair; got a scalar")
    n = present[0].shape[0]
    if any(t.shape[0] != n for t in present):
        raise ZeroshiftError(f"gather_rows: every tensor must have {n} rows, one per pair; got "
                             f"{[tuple(t.shape) for t in present]}")
    if not _initialized() or dist.get_world_size() == 1:
        return tensors, slice(0, n)
    world, me = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([n], device=present[0].device)  # [1]
    counts = [torch.zeros_like(count) for _ in range(world)]  # world x [1]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    start = sum(sizes[:me])
    gathered = tuple(None if t is None else _all_gather_rows(t, sizes) for t in tensors)
    return gathered, slice(start, start + n)
