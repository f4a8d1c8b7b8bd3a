"""What an image path costs per image, measured: parameters, multiply-adds and images per second.

`image_cost(model)` takes an image encoder (a student, a backbone) or a VLM (its image path: image tower
and head, `VLM.image_parts`) at the input shape of its own image transform and gives

    parameters         the weights one image's forward pass reads (an unused classifier left in a
                       backbone is not counted; an ONNX-only tower counts its graph's weights)
    stored_parameters  every weight the path holds (what VLM.cost() reports)
    macs               multiply-adds per image, counted at batch 1 by torch's FlopCounterMode (flops / 2),
                       attention included; None for a tower that exists only as an ONNX graph
    images_per_second  at batch 32 on the current thread count, as the model runs (eager PyTorch, or
                       onnxruntime for an accelerated tower): a warm-up batch, then timed batches for
                       at least `seconds`; None with measure_speed=False

`cost_rows(student, teacher)` formats two such dicts as the Markdown table of a model card.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from ..costcache import cached, stable_spec
from ..errors import ZeroshiftError
from .transforms import probe_batch
from .vlm import VLM, ImageEncoder, weights

BATCH = 32  # images per timed batch
SECONDS = 0.3  # the least time the timed batches take together


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU fused attention, which FlopCounterMode does not know: those of the other fused kernels."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}


class _Reads(TorchDispatchMode):
    """Records the storage of every tensor an operator reads, to tell which parameters a forward pass uses."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for arg in torch.utils._pytree.tree_leaves((args, kwargs or {})):
            if isinstance(arg, torch.Tensor) and arg.device.type != "meta":
                self.storages.add(arg.untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def _path(model: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module], list[nn.Module | None]]:
    """(inference function as the model runs, the parts holding its weights, those parts as PyTorch modules
    to count on, None where a part exists only as an ONNX graph)."""
    if isinstance(model, VLM):
        try:
            tower, head = model.image_parts()
        except ZeroshiftError:
            raise ZeroshiftError(f"{model.spec} names no separate image path (image tower and head) to measure; "
                                 "measure its image encoder instead") from None
        return model.encode_image, [tower, head], [tower.torch_module(), head]
    if isinstance(model, ImageEncoder):
        return model.encode_image, [model], [model.torch_module()]
    raise ZeroshiftError(f"cannot measure the cost of a {type(model).__name__}: give an image encoder or a VLM")


def count(parts: list[nn.Module], images: torch.Tensor) -> tuple[int, int]:
    """(multiply-adds, parameters read) of running `parts` one after the other on `images` [1, 3, H, W]:
    in eval mode with autograd on and the fused transformer fast path off, so that every matrix product,
    attention included, is an operator FlopCounterMode sees."""
    modes = [(m, m.training) for m in parts]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    reads = _Reads()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for m, _ in modes:
            m.eval()
        with flop_counter.FlopCounterMode(display=False, custom_mapping=ATTENTION) as flops, reads, \
                torch.enable_grad():
            x = images
            for m in parts:
                x = m(x)  # [1, ...] the next part's input
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in modes:
            m.train(training)
    used = {p.untyped_storage().data_ptr(): p.numel() for m in parts for p in m.parameters()
            if p.untyped_storage().data_ptr() in reads.storages}
    return flops.get_total_flops() // 2, sum(used.values())


def images_per_second(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      seconds: float = SECONDS) -> float:
    """Images per second of `fn` on the batch `images`: one warm-up call, then calls until `seconds` pass."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    fn(images)
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn(images)
        sync()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(images) / elapsed


def image_cost(model: Any, measure_speed: bool = True, batch: int = BATCH, seconds: float = SECONDS,
               cache: bool = False) -> dict:
    """The cost of one image through `model` (an ImageEncoder, or a VLM's image path); see the module
    docstring for the fields. It runs in eval mode; the model's train/eval modes, weights, statistics and
    the thread count are left as they were. With `cache`, a model whose spec names fixed weights
    (costcache.stable_spec: a catalogue model, not a run or a random one) is measured once per machine,
    spec, runtime, device and thread count, and read back from $ZEROSHIFT_HOME/costs after that."""
    fn, holders, modules = _path(model)
    device = next((p.device for m in holders for p in m.parameters()), torch.device("cpu"))
    onnx = any(getattr(m, "runs_onnx", False) for h in holders for m in h.modules())
    spec = getattr(model, "spec", None)
    if cache and isinstance(spec, str) and stable_spec(spec):
        key = {"what": "image_cost", "spec": spec, "runtime": "onnx" if onnx else "torch", "device": str(device),
               "threads": torch.get_num_threads(), "batch": batch, "seconds": seconds, "speed": measure_speed}
        return cached(key, lambda: image_cost(model, measure_speed, batch, seconds))
    one = probe_batch(model.image_transform, 1)  # [1, 3, H, W]
    stored = sum(weights(*holders).values())
    macs, used = (None, stored) if any(m is None for m in modules) else count(modules, one.to(device))
    speed = None
    if measure_speed:
        modes = [(m, m.training) for h in holders for m in h.modules()]
        try:
            for h in holders:
                h.eval()  # a student in training mode would otherwise move its BatchNorm statistics
            speed = images_per_second(fn, one.expand(batch, -1, -1, -1).contiguous().to(device), seconds)
        finally:
            for m, training in modes:
                m.training = training
    return {"spec": getattr(model, "spec", type(model).__name__), "input": list(one.shape[1:]),
            "parameters": used, "stored_parameters": stored, "macs": macs,
            "images_per_second": speed, "batch": batch, "threads": torch.get_num_threads(),
            "runtime": "onnx" if onnx else "torch"}


def human(n: float | None) -> str:
    """12345678 -> '12.35M', 67520 -> '67.5K'; None -> '-'."""
    if n is None:
        return "-"
    for limit, suffix, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "K", 1)):
        if abs(n) >= limit:
            return f"{n / limit:.{digits}f}{suffix}"
    return f"{n:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.3g}x"


def cost_rows(student: dict, teacher: dict) -> list[str]:
    """A model card's Markdown table of a student's image path beside its teacher's (image_cost dicts):
    parameters, multiply-adds and images per second, and the student / teacher ratio of each."""
    shape = lambda c: "x".join(str(s) for s in c.get("input") or []) or "-"  # noqa: E731
    speed = lambda c: "-" if c.get("images_per_second") is None else \
        f"{c['images_per_second']:,.0f} ({c.get('runtime', 'torch')})"  # noqa: E731
    threads = student.get("threads") or teacher.get("threads")
    timed = f"batch {student.get('batch', BATCH)}, {threads} thread{'s' * (threads != 1)}"
    rows = [("input (channels x height x width)", shape(student), shape(teacher), ""),
            ("parameters (read per image)", human(student.get("parameters")), human(teacher.get("parameters")),
             _ratio(student.get("parameters"), teacher.get("parameters"))),
            ("multiply-adds per image", human(student.get("macs")), human(teacher.get("macs")),
             _ratio(student.get("macs"), teacher.get("macs"))),
            (f"images per second ({timed})", speed(student),
             speed(teacher), _ratio(student.get("images_per_second"), teacher.get("images_per_second")))]
    return ["| | student | teacher image tower | student / teacher |", "|---|---|---|---|",
            *(f"| {' | '.join(row)} |" for row in rows)]
