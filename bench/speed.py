"""Model-only training speed of a student: forward, backward and an AdamW step on a ready float batch that
is already on the device, with no data path, loss plumbing or loop around it. What the shared loop's
images per second are measured against (bench/loop_speed.py), and what other benchmarks can quote."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import timed
from torch import nn

from zeroshift.models.transforms import probe_batch
from zeroshift.train.fast import MEMORY_FORMATS


def model_steps(student: nn.Module, batch_size: int, steps: int = 1, memory_format: str = "contiguous",
                device: str = "cpu", lr: float = 1e-3) -> Callable[[], None]:
    """A function doing `steps` training steps of `student` (train mode): forward of one probe batch
    [batch_size, 3, H, W] of its own preprocessing, an L2 loss against fixed unit targets, backward, AdamW.
    The batch and targets are made once, outside; `memory_format` lays out the weights and the batch
    (the weights are put back contiguous after each call, so calls of other formats can take turns)."""
    layout = MEMORY_FORMATS[memory_format]
    x = probe_batch(student.image_transform, batch_size).to(device).contiguous(memory_format=layout)  # [B, 3, H, W]
    student.to(device)
    with torch.no_grad():
        target = F.normalize(torch.randn_like(student.eval()(x[:1]).float()).expand(batch_size, -1), dim=-1)  # [B, d]
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)

    def run() -> None:
        student.to(memory_format=layout).train()
        for _ in range(steps):
            s = F.normalize(student(x).float(), dim=-1)  # [B, d]
            loss = (s - target).pow(2).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        student.to(memory_format=torch.contiguous_format).eval()

    return run


def model_only_rate(student: nn.Module, batch_size: int, steps: int = 4, repeats: int = 3,
                    memory_format: str = "contiguous", device: str = "cpu") -> float:
    """Images per second of `student`'s model-only training steps at `batch_size`: the median of `repeats`
    timed calls of `steps` steps each, after one untimed call."""
    timing = timed(model_steps(student, batch_size, steps, memory_format, device), repeats, warmup=1)
    return steps * batch_size / timing.median
