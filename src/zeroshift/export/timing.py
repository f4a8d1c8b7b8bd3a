"""What an exported classifier costs to deploy on this CPU: ms per image at batch 1, images per second at
batch 32, file size, for the float graph and its int8 twin.

    costs = deploy_costs(vlm, ["cat", "dog"], "work/", threads=2, calibrate="folder:photos/")
    costs["float"]["ms_per_image_b1"], costs["int8"].get("refused")

`time_graph` runs one graph under onnxruntime with idle threads sleeping instead of spinning (a spinning
pool would steal the cores of whatever runs next in the process), after warm-up calls, and takes the
median call. Wrap a measurement in costcache.cached to make it once per machine.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ZeroshiftError
from ..models.vlm import VLM
from ..ort import session
from .onnx import export_classifier, float_path
from .preprocess import read_sidecar, sidecar_path
from .quantize import Int8, Refused

BIG_BATCH = 32
WARMUP_B1, WARMUP_B32 = 2, 1  # untimed calls first: onnxruntime allocates and picks kernels on the first runs


def sample_input(path: str | os.PathLike, n: int = BIG_BATCH, seed: int = 0) -> np.ndarray:
    """`n` inputs of the shape and type the graph's sidecar gives: uint8 pixels [n, H, W, 3] or float
    [n, 3, H, W]. Random values: these graphs take the same time whatever the pixels."""
    spec = read_sidecar(path).get("input") or {}
    shape, dtype = spec.get("shape"), spec.get("dtype")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) for s in shape[1:])):
        raise ZeroshiftError(f"the sidecar of {path} gives no fixed input shape ({shape}); pass pixels to time it")
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, (n, *shape[1:]), dtype=np.uint8)  # [n, H, W, 3]
    if dtype == "float32":
        return rng.standard_normal((n, *shape[1:])).astype(np.float32)  # [n, 3, H, W], as after normalisation
    raise ZeroshiftError(f"the sidecar of {path} gives input dtype {dtype!r}; time_graph feeds uint8 or float32")


def _batch_of(array: np.ndarray, n: int) -> np.ndarray:
    """`n` rows of `array`, repeating its rows when it has fewer."""
    return np.ascontiguousarray(array[np.arange(n) % len(array)])


def time_graph(path: str | os.PathLike, threads: int, batch1_calls: int = 20, batch32_calls: int = 3,
               pixels: np.ndarray | None = None) -> dict:
    """{"ms_per_image_b1": median ms of a batch-1 call, "images_per_second_b32": 32 / median seconds of a
    batch-32 call, "threads": threads} for the ONNX graph at `path` on `threads` threads. It is fed `pixels`
    (the graph's input, [N, ...]; rows repeated up to 32) or inputs shaped as its sidecar says. A graph
    with a fixed batch axis is run in chunks of that size."""
    if threads < 1 or batch1_calls < 1 or batch32_calls < 1:
        raise ZeroshiftError(f"threads and call counts must be at least 1; got threads={threads}, "
                             f"batch1_calls={batch1_calls}, batch32_calls={batch32_calls}")
    if pixels is not None and (not isinstance(pixels, np.ndarray) or pixels.ndim < 2 or len(pixels) == 0):
        raise ZeroshiftError("pixels must be a non-empty array of graph inputs [N, ...]")
    feed = sample_input(path) if pixels is None else _batch_of(pixels, BIG_BATCH)
    sess = session(path, threads, spin=False)  # idle threads sleep: one model timed at a time
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else None  # None: any batch size

    def call(batch: np.ndarray) -> None:
        chunk = step or len(batch)
        for i in range(0, len(batch), chunk):
            sess.run(None, {name: _batch_of(batch[i:i + chunk], chunk)})

    def median_seconds(batch: np.ndarray, warmup: int, calls: int) -> float:
        for _ in range(warmup):
            call(batch)
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            call(batch)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    one, big = feed[:1], feed[:BIG_BATCH]
    try:
        b1 = median_seconds(one, WARMUP_B1, batch1_calls)
        b32 = median_seconds(big, WARMUP_B32, batch32_calls)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes for a wrong input
        raise ZeroshiftError(f"onnxruntime could not run {path} on inputs {list(feed.shape[1:])} {feed.dtype}: "
                             f"{str(e).splitlines()[0][:200]}") from None
    return {"ms_per_image_b1": 1000.0 * b1, "images_per_second_b32": BIG_BATCH / b32, "threads": threads}


def _timed(path: Path, threads: int, **kw) -> dict:
    return {"file": str(path), "bytes": path.stat().st_size, "input": "pixels" if read_sidecar(path).get("input", {}).get("dtype") == "uint8" else "float",
            **time_graph(path, threads, **kw)}


def _reason(error: Exception) -> str:
    """The error's first line, without export_classifier's note on where the float graph went."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.split("; the float graph was written to")[0]


def deploy_costs(vlm: VLM, labels: Sequence[str], work_dir: str | os.PathLike, threads: int = 1,
                 int8: Int8 | None = Int8(), templates: str | None = None, calibrate: str | None = None,
                 batch1_calls: int = 20, batch32_calls: int = 3, input: str = "pixels") -> dict:
    """Export `vlm`'s zero-shot classifier over `labels` into `work_dir` (classifier.float.onnx and, with
    `int8`, classifier.onnx) and time each on `threads` threads:

        {"float": {"file", "bytes", "ms_per_image_b1", "images_per_second_b32", "threads"},
         "int8": {same, "agreement_with_float", "check_images"} or {"refused": one-line reason}}

    ("int8" is absent when `int8` is None). `calibrate` (a data spec or a .npy of pixels) replaces
    int8.calibrate: int8 needs calibration images, and a model that is not a run with fit data recorded
    has none of its own. An int8 graph that is refused (below int8.min_agreement) or cannot be made (no
    calibration images, the quantiser fails) is reported as refused; the float graph is timed either way.
    A float export that fails raises. `input` is export_classifier's ('float' for a model whose
    preprocessing has no graph form: then the timing leaves the preprocessing out, and says so)."""
    work = Path(work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    out = work / "classifier.onnx"
    timing = {"batch1_calls": batch1_calls, "batch32_calls": batch32_calls}
    if int8 is None:
        written = export_classifier(vlm, labels, float_path(out), templates=templates, input=input)
        return {"float": _timed(written, threads, **timing)}
    if calibrate is not None:
        int8 = dataclasses.replace(int8, calibrate=calibrate)
    refused = None
    try:
        export_classifier(vlm, labels, out, templates=templates, int8=int8, keep_float=True, input=input)
    except Refused as e:  # the float graph was written (keep_float)
        refused = _reason(e)
    except ZeroshiftError as e:  # before the float graph was written: from quantisation, or from the float export
        export_classifier(vlm, labels, float_path(out), templates=templates, input=input)  # raises if the float side failed
        refused = _reason(e)
    costs = {"float": _timed(float_path(out), threads, **timing)}
    if refused is not None:
        for stale in (out, sidecar_path(out)):  # an int8 graph from an earlier call must not pass for this one's
            stale.unlink(missing_ok=True)
        return {**costs, "int8": {"refused": refused}}
    quant = read_sidecar(out).get("int8") or {}
    costs["int8"] = {**_timed(out, threads, **timing), "agreement_with_float": quant.get("agreement"),
                     "check_images": (quant.get("check") or {}).get("images")}
    return costs
