"""int8 exports with onnxruntime's quantisation tools, refused unless they keep the float graph's answers.

A graph whose weights sit mostly in convolutions (a CNN image tower) is quantised statically, QDQ:
uint8 activations and per-channel int8 weights (onnxruntime's fast U8S8 path on x86), activation ranges
calibrated (MinMax) on real images; a graph whose weights sit mostly in MatMul/Gemm (a ViT, a text tower)
dynamically: int8 weights, activations quantised at run time. The pixels-in front (graph.PREFIX nodes)
stays float either way. Calibration images come from `--calibrate` (a data spec, or a .npy of uint8
[N, H, W, 3] pixels at the graph's input size) or, for a run, from the fit data its config.json records;
they are decoded as zeroshift decodes and shuffled (seed 0): the first `images` calibrate, the next
`check_images` (never calibrated on) measure top-1 agreement with the float graph. Below
`min_agreement` the int8 graph is refused (Refused), saying what was measured.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError, ZeroshiftError
from . import graph as graphs

CALIBRATION_BATCH = 4  # MinMax ranges merge across batches, so the graph is the same at any batch; at 16, calibrating
# EfficientNet-Lite0 at 224 px held 1.7 GB more than at 4 (the quickstart's memory peak)


@dataclass(frozen=True)
class Int8:
    """How to quantise: calibration data (None: a run's own fit data), how many images calibrate and how
    many more check, the least top-1 agreement with the float graph accepted, and the method ('auto':
    static for convolution-heavy graphs, dynamic for MatMul-heavy ones)."""

    calibrate: str | None = None
    images: int = 128
    check_images: int = 256
    min_agreement: float = 0.98
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.images < 1 or self.check_images < 1:
            raise ZeroshiftError(f"--calibration-images and --check-images must be at least 1; got {self.images} "
                                 f"and {self.check_images}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ZeroshiftError(f"--min-agreement must be from 0 to 1; got {self.min_agreement}")
        if self.method not in ("auto", "static", "dynamic"):
            raise ZeroshiftError(f"int8 method must be auto, static or dynamic; got {self.method!r}")


class Refused(ZeroshiftError):
    """An int8 graph whose answers agree with its float graph's below the threshold."""


def fit_specs(vlm) -> list[str]:
    """The data specs a run was fit on (config.json `data` / `pairs`); [] for a model that is not a run."""
    config = getattr(vlm, "run_config", None) or {}
    specs: list[str] = []
    for key in ("data", "pairs", "unpaired_data"):
        entries = config.get(key)
        for entry in entries if isinstance(entries, list) else [entries]:
            spec = entry.get("spec") if isinstance(entry, dict) else entry
            if isinstance(spec, str) and spec and spec not in specs:
                specs.append(spec)
    return specs


@dataclass
class Images:
    """Graph inputs to calibrate on and to check agreement on, and where they came from."""

    calibration: np.ndarray
    check: np.ndarray
    info: dict


def _split(good: list[np.ndarray], int8: Int8) -> tuple[np.ndarray, np.ndarray]:
    """The first `images` calibrate, the next `check_images` check; fewer images are shared out, the check
    getting at most half."""
    enough = len(good) >= int8.images + int8.check_images
    n_check = int8.check_images if enough else min(int8.check_images, len(good) // 2)
    n_cal = min(int8.images, len(good) - n_check)
    return np.stack(good[:n_cal]), np.stack(good[n_cal:n_cal + n_check])


def _from_array(path: Path, recipe: dict | None, int8: Int8) -> Images:
    """A .npy of uint8 pixels [N, H, W, 3], already at the graph's input size."""
    if recipe is None or not recipe.get("in_graph", True):
        raise ZeroshiftError(f"--calibrate {path}: an array of pixels calibrates a graph that takes pixels; "
                             "with --input float give a data spec")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"--calibrate {path} is not a readable .npy array ({e})") from None
    h, w = recipe["size"]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise DataError(f"--calibrate {path} holds a {array.dtype} array of shape {array.shape}, not uint8 RGB images "
                        f"[N, {h}, {w}, 3]")
    if len(array) < 2:
        raise DataError(f"--calibrate {path} holds {len(array)} image(s); int8 needs at least 2 (one to calibrate, "
                        "one to check)")
    if tuple(array.shape[1:3]) != (h, w):
        raise DataError(f"--calibrate {path} holds {array.shape[2]}x{array.shape[1]} images, but the graph takes "
                        f"{w}x{h}: bring them to the graph's input size with zeroshift.export.preprocess, or give "
                        "a data spec")
    order = np.random.default_rng(0).permutation(len(array))
    calibration, check = _split(list(array[order]), int8)
    return Images(calibration, check, {"data": [str(path)], "source": "--calibrate array", "bad_images": 0})


def calibration_images(vlm, recipe: dict | None, feed: Callable, decode_side: int | None, int8: Int8) -> Images:
    """Calibration and check inputs for `vlm`'s graph: `feed(pil)` makes one graph input from an image."""
    from ..data.base import BadImage, load_row
    from ..specs import dataset

    if int8.calibrate is not None and int8.calibrate.endswith(".npy"):
        return _from_array(Path(int8.calibrate).expanduser(), recipe, int8)
    specs = [int8.calibrate] if int8.calibrate is not None else fit_specs(vlm)
    if not specs:
        raise ZeroshiftError(f"--int8 needs calibration images: {vlm.spec} is not a run with fit data recorded, "
                             "so give --calibrate SPEC (a data spec, e.g. folder:photos/ or tuxpaint)")
    sources = [dataset(spec) for spec in specs]
    rows = [(k, i) for k, source in enumerate(sources) for i in range(len(source))]
    if not rows:
        raise DataError(f"the calibration data {', '.join(specs)} has no images")
    order = np.random.default_rng(0).permutation(len(rows))
    want, good, bad, first = int8.images + int8.check_images, [], 0, None
    for j in order:
        k, i = rows[int(j)]
        try:
            good.append(feed(load_row(sources[k], i, decode_side)))
        except BadImage as e:
            bad, first = bad + 1, first or str(e)
        if len(good) >= want:
            break
    if not good:
        raise DataError(f"none of the {bad} calibration images of {', '.join(specs)} could be decoded "
                        f"(the first: {first}); give --calibrate other images")
    if len(good) < 2:
        raise DataError(f"the calibration data {', '.join(specs)} has {len(good)} usable image; int8 needs at least 2 "
                        "(one to calibrate, one to check)")
    calibration, check = _split(good, int8)
    source = "--calibrate" if int8.calibrate is not None else "the run's fit data"
    return Images(calibration, check, {"data": specs, "source": source, "bad_images": bad})


def weight_split(model) -> dict[str, int]:
    """Weight entries consumed by convolutions and by MatMul/Gemm: which kind of graph this is."""
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    split = {"conv": 0, "matmul": 0}
    for node in model.graph.node:
        kind = "conv" if node.op_type == "Conv" else "matmul" if node.op_type in ("MatMul", "Gemm") else None
        if kind and not node.name.startswith(graphs.PREFIX):
            split[kind] += sum(sizes.get(x, 0) for x in node.input[1:])
    return split


def choose(model, method: str = "auto") -> str:
    """'static' for a convolution-heavy graph, 'dynamic' for a MatMul-heavy one (or as asked)."""
    if method != "auto":
        return method
    split = weight_split(model)
    return "dynamic" if split["matmul"] > split["conv"] else "static"


class _Reader:
    """onnxruntime's CalibrationDataReader over an array of graph inputs, in batches."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self.batches = iter([{name: inputs[i:i + CALIBRATION_BATCH]} for i in range(0, len(inputs), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def quantize(float_file: Path, out: Path, method: str, input_name: str, calibration: np.ndarray | None) -> str:
    """Write `out`, the int8 graph of `float_file`; returns a description of what was done."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort.set_default_logger_severity(3)  # calibration sessions warn about every unused initializer
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # the quantiser's advice goes to the root logger; put back below
    prepared = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=True)  # folds Pad into Conv, etc.
    except Exception:  # noqa: BLE001 - an optimisation only: quantise the graph as it is
        prepared = float_file
    exclude = graphs.preprocess_nodes(onnx.load(str(prepared), load_external_data=False))
    try:
        if method == "dynamic":
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})
            return "dynamic (int8 MatMul/Gemm weights, activations quantised at run time)"
        quantize_static(str(prepared), str(out), _Reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax)
        return "static QDQ (uint8 activations, per-channel int8 weights, MinMax calibration)"
    except Exception as e:  # noqa: BLE001 - the quantiser raises anything from deep inside onnx
        raise ZeroshiftError(f"onnxruntime could not quantise the graph to int8: {str(e).splitlines()[0][:200]}") from e
    finally:
        root.setLevel(level)
        if prepared != float_file:
            prepared.unlink(missing_ok=True)


def run(path: Path, inputs: dict[str, np.ndarray], output: str, batch: int = 32) -> np.ndarray:
    """`output` of the graph at `path` on `inputs`, in batches."""
    from ..ort import session

    sess = session(path)
    n = len(next(iter(inputs.values())))
    return np.concatenate([sess.run([output], {k: v[i:i + batch] for k, v in inputs.items()})[0]
                           for i in range(0, n, batch)])


def agreement(want: np.ndarray, got: np.ndarray) -> float:
    """Top-1 agreement of two score arrays [N, C]."""
    return float((want.argmax(-1) == got.argmax(-1)).mean())


def verdict(spec: str, what: str, agree: float, n: int, images: Images, int8: Int8) -> dict:
    """The check's record for the sidecar; Refused below the threshold."""
    data = ", ".join(images.info["data"])
    if not agree >= int8.min_agreement:
        raise Refused(f"the int8 {what} of {spec} agrees with its float graph on {agree:.3f} of {n} check images "
                      f"({data}), below --min-agreement {int8.min_agreement}")
    return {"images": n, "top1_agreement": agree, "min_agreement": int8.min_agreement}


def calibration_inputs(vlm, recipe: dict | None, pixels: bool, int8: Int8) -> Images:
    """Calibration and check inputs for a graph of `vlm` taking pixels (or, not `pixels`, transformed floats)."""
    from ..models.transforms import decode_side
    from . import preprocess

    def feed(image) -> np.ndarray:
        if pixels:
            return preprocess.resize_crop(image, recipe)  # [H, W, 3] uint8
        return vlm.image_transform(image).float().numpy()  # [3, H, W]

    side = recipe["decode"]["max_side"] if recipe else decode_side(vlm.image_transform)
    return calibration_images(vlm, {**recipe, "in_graph": pixels} if recipe else None, feed, side, int8)


def classifier_int8(vlm, float_file: Path, work: Path, recipe: dict | None, pixels: bool,
                    int8: Int8) -> tuple[bytes, dict]:
    """The int8 graph of an exported classifier (bytes) and its sidecar record; Refused below the threshold."""
    import onnx

    INPUT, OUTPUT = graphs.INPUT, graphs.LOGITS
    images = calibration_inputs(vlm, recipe, pixels, int8)
    method = choose(onnx.load(str(float_file)), int8.method)
    out = work / "int8.onnx"
    done = quantize(float_file, out, method, INPUT, images.calibration)
    agree = agreement(run(float_file, {INPUT: images.check}, OUTPUT), run(out, {INPUT: images.check}, OUTPUT))
    check = verdict(vlm.spec, "classifier", agree, len(images.check), images, int8)
    record = {"method": done, "calibration": {**images.info, "images": len(images.calibration)}, "check": check,
              "agreement": agree, "float_bytes": float_file.stat().st_size, "int8_bytes": out.stat().st_size}
    return out.read_bytes(), record


def _labels(labels, images: Images) -> list[str]:
    """The labels agreement is measured over: those given, else the calibration data's classes."""
    from ..specs import dataset

    if labels:
        return list(labels)
    for spec in images.info["data"]:
        classes = None if spec.endswith(".npy") else dataset(spec).classes
        if classes:
            return list(classes)
    raise ZeroshiftError("--int8 --towers measures agreement over labels: give --labels, or calibration data with "
                         "classes (a folder of class sub-folders, a labelled catalogue set)")


def towers_int8(vlm, files: dict[str, Path], work: Path, recipe: dict | None, pixels: bool, labels, prompts,
                tokenizer, int8: Int8) -> tuple[dict[str, Path], dict[str, dict]]:
    """int8 image and text graphs of a tower pair and their sidecar records. Agreement is measured on the
    zero-shot answers over `labels` (or the calibration data's classes): both int8 graphs against both float
    ones, refused below the threshold; each graph alone is recorded too."""
    import onnx

    from .run import class_weights, session

    INPUT = graphs.INPUT
    images = calibration_inputs(vlm, recipe, pixels, int8)
    names = _labels(labels, images)
    quantized = {"image": work / "image.int8.onnx", "text": work / "text.int8.onnx"}
    done = {"image": quantize(files["image"], quantized["image"], choose(onnx.load(str(files["image"])), int8.method),
                              INPUT, images.calibration),
            "text": quantize(files["text"], quantized["text"], "dynamic", "input_ids", None)}
    z = {k: run(path, {INPUT: images.check}, graphs.EMBEDDINGS) for k, path in (("float", files["image"]),
                                                                            ("int8", quantized["image"]))}
    w = {k: class_weights(session(path), tokenizer, names, prompts) for k, path in (("float", files["text"]),
                                                                                     ("int8", quantized["text"]))}
    want = z["float"] @ w["float"].T  # [N, C]
    both = agreement(want, z["int8"] @ w["int8"].T)
    check = verdict(vlm.spec, "tower pair", both, len(images.check), images, int8)
    check = {**check, "labels": len(names), "image_int8_only": agreement(want, z["int8"] @ w["float"].T),
             "text_int8_only": agreement(want, z["float"] @ w["int8"].T)}
    calibration = {**images.info, "images": len(images.calibration)}
    records = {side: {"method": done[side], "calibration": calibration if side == "image" else None, "check": check,
                      "agreement": both, "float_bytes": files[side].stat().st_size,
                      "int8_bytes": quantized[side].stat().st_size} for side in ("image", "text")}
    return quantized, records
