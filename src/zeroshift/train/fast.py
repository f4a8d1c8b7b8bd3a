"""What makes the shared loop fast on a CPU, measured on student-cnn (bench/loop_speed.py):

- channels_last: depthwise and grouped convolutions (and the BatchNorm/SiLU between them) run about
  1.4x faster per step in NHWC than in NCHW with PyTorch's oneDNN kernels. A method that trains such a
  network sets TrainConfig.memory_format; the loop converts the task's 4-d weights and every 4-d batch
  tensor, and converts the weights back when training ends (safetensors saves contiguous tensors only).
- glibc malloc: a student-cnn step allocates activations of tens of MB; above glibc's mmap threshold
  each is mmapped and unmapped again, so every step page-faults (and zeroes) them afresh. While
  training on the CPU the heap keeps freed memory instead (`malloc_tuned`), and gives it back after.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

# glibc mallopt parameters (malloc.h) and their defaults, restored after training
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_MAX: 65536}
_TUNED = {_M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20, _M_MMAP_MAX: 0}  # keep up to 1 GB free in the heap


def prefers_channels_last(module: nn.Module) -> bool:
    """Whether `module` has a grouped or depthwise 2-d convolution, the layers channels_last speeds up
    most on a CPU (a ViT's single patch-embedding conv does not count)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in module.modules())


def preferred_format(module: nn.Module) -> str:
    """The TrainConfig.memory_format name to train `module` in."""
    return "channels_last" if prefers_channels_last(module) else "contiguous"


def to_format(batch: Any, memory_format: torch.memory_format) -> Any:
    """`batch` (tensors in dicts, lists and tuples) with every 4-d tensor in `memory_format`."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=memory_format) if batch.ndim == 4 else batch
    if isinstance(batch, dict):
        return {k: to_format(v, memory_format) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_format(v, memory_format) for v in batch)
    return batch


def _mallopt() -> Any | None:
    """glibc's mallopt, or None off Linux/glibc (musl, macOS, Windows have none to tune)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def malloc_tuned(enabled: bool = True) -> Iterator[bool]:
    """Within: glibc serves every allocation from its heap and keeps what is freed (no mmap per big
    tensor, no page faults per step). After: glibc's defaults again, and free heap memory returned to
    the OS (malloc_trim). Yields whether anything was tuned."""
    mallopt = _mallopt() if enabled else None
    if mallopt is None:
        yield False
        return
    for param, value in _TUNED.items():
        mallopt(param, value)
    try:
        yield True
    finally:
        for param, value in _DEFAULTS.items():
            mallopt(param, value)
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
