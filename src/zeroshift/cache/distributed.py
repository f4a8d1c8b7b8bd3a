"""Tiny helpers for running under `torchrun`: who am I, how many are we, wait for everyone.

Outside torchrun (no RANK/WORLD_SIZE in the environment) every helper answers as a single
process and `barrier` does nothing, so one process behaves exactly as it would without them.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ..errors import ZeroshiftError


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
    from .. import __version__

    mine = {"zeroshift": __version__, "torch": torch.__version__}
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
