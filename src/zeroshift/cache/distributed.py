"""Tiny helpers for running under `torchrun`: who am I, how many are we, wait for everyone.

Outside torchrun (no RANK/WORLD_SIZE in the environment) every helper answers as a single
process and `barrier` does nothing, so one process behaves exactly as it would without them.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def init() -> None:
    """Initialise the default process group from the environment if nobody has yet.

    gloo serves CPU tensors; where CUDA is present NCCL serves GPU tensors in the same group, so a
    later DDP run reuses it (a destroyed default group cannot be re-created under torchrun's store).
    """
    if _initialized() or not is_distributed():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def barrier() -> None:
    """Wait until every rank gets here (initialising the process group if needed); no-op alone."""
    if not is_distributed():
        return
    init()
    dist.barrier()
