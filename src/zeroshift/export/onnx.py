"""A VLM plus fixed labels -> one ONNX classifier: images -> logits [N, C].

    logits = 100 * normalize(image_head(image_tower(transform(images)))) @ W.T

with W [C, d] the zero-shot weights of the labels (zeroshot.classifier.zeroshot_weights), stored in
the graph. By default (`input="pixels"`) the graph takes what an application has, uint8 RGB images
[N, H, W, 3] at the model's input size, and does the conversion, scaling and normalisation itself;
the sidecar `<out>.json` holds the recipe that brings any image to H x W (export/preprocess.py
follows it without PyTorch). `input="float"` keeps the graph that starts after preprocessing,
[N, 3, H, W] float. A PyTorch image tower is exported with its head in one piece; an ONNX-only tower
(an `onnx:` spec, `open-nsfw`) is merged with the exported head by onnx.compose. Every export is run by
onnxruntime on check images and refused unless its top-1 equals PyTorch's (preprocessing included)
and its logits agree to LOGIT_TOLERANCE. `int8` quantises it (export/quantize.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.templates import get_templates
from ..errors import ZeroshiftError
from ..io import atomic_path, clean_temp, write_json
from ..models.onnx_export import OPSET, to_onnx
from ..models.transforms import probe_images, recipe as transform_recipe
from ..models.vlm import VLM
from ..paths import user_path
from ..zeroshot.classifier import check_classnames, classify, zeroshot_weights
from . import graph as graphs
from . import preprocess

if TYPE_CHECKING:
    import onnx

    from .quantize import Int8

INPUT, OUTPUT = graphs.INPUT, graphs.LOGITS
INPUTS = ("pixels", "float")
LOGIT_TOLERANCE = 1e-2  # max |logit difference| allowed (logits are 100 * cosine)
EXPORT_BATCH, CHECK_BATCH = 2, 8  # different sizes, so the check also exercises the dynamic batch axis
CHECK_SIZES = ((300, 260), (180, 330), (97, 61), (640, 480))  # probe images, landscape, portrait, small, large
_TOWER = "tower/"  # prefix of every name in a merged ONNX tower, so it cannot clash with the head's
STALE_TEMP_S = 600.0  # an `out` temp file unmodified this long is a killed export's (a live one's is seconds old)


class Logits(nn.Module):
    """features (or images, with a tower) -> 100 * normalize(head(.)) @ W.T: [N, C]."""

    def __init__(self, head: nn.Module, weights: torch.Tensor, tower: nn.Module | None = None) -> None:
        super().__init__()
        self.tower, self.head = tower, head
        self.register_buffer("weights", weights.float())  # [C, d], unit rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.tower(x) if self.tower is not None else x
        z = self.head(feats.flatten(1).float())  # [N, d]
        return 100.0 * F.normalize(z, dim=-1) @ self.weights.T  # [N, C]


def _torch_to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, opset: int,
                   output: str = OUTPUT) -> "onnx.ModelProto":
    """The module on the device of its weights (the class weights join the tower's), through the one exporter."""
    device = _device(module)
    return to_onnx(module.to(device), example.to(device), input_name, output, opset)


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def merged(tower, head_module: Callable[[torch.Tensor], nn.Module], example: torch.Tensor,
           output: str = OUTPUT) -> "onnx.ModelProto":
    """An ONNX-only tower (OnnxImageEncoder) joined to an exported head: images [N, 3, H, W] -> `output`.
    `head_module(raw)` is the PyTorch module taking the tower's raw output `raw`."""
    import onnx
    from onnx import compose, helper, version_converter

    model = onnx.load(str(tower.onnx_file()))
    initialized = {i.name for i in model.graph.initializer}
    feeds = [i for i in model.graph.input if i.name not in initialized]
    if len(feeds) != 1:
        raise ZeroshiftError(f"cannot export {tower.spec}: its graph takes {len(feeds)} inputs, not one image batch")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if not 9 <= opset <= 20:
        model, opset = version_converter.convert_version(model, OPSET), OPSET
    pixels = example[: tower.fixed_batch or len(example)]  # [B, 3, H, W]
    pixels = pixels.permute(0, 2, 3, 1) if tower.layout == "nhwc" else pixels  # the layout the graph takes
    raw = tower.session.run([tower.output], {tower.input_name: np.ascontiguousarray(pixels.numpy())})[0]
    head_model = _torch_to_onnx(head_module(torch.from_numpy(raw)).eval(), torch.from_numpy(raw), "features", opset,
                                output)

    model = compose.add_prefix(model, _TOWER)
    graph = model.graph
    feed = graph.input[[i.name for i in graph.input].index(_TOWER + tower.input_name)]
    batch = tower.fixed_batch or "batch"
    images = helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [batch, *example.shape[1:]])
    if tower.layout == "nhwc":
        graph.node.insert(0, helper.make_node("Transpose", [INPUT], [feed.name], perm=[0, 2, 3, 1], name="to_nhwc"))
    else:
        graph.node.insert(0, helper.make_node("Identity", [INPUT], [feed.name], name="images_in"))
    graph.input.remove(feed)
    graph.input.insert(0, images)
    ir = max(model.ir_version, head_model.ir_version)
    model.ir_version = head_model.ir_version = ir
    try:
        joined = compose.merge_models(model, head_model, io_map=[(_TOWER + tower.output, "features")],
                                      outputs=[output])
        onnx.checker.check_model(joined)
    except Exception as e:  # noqa: BLE001 - onnx raises ValueError, TypeError, ValidationError
        raise ZeroshiftError(f"could not join the ONNX graph of {tower.spec} to its head: "
                             f"{str(e).splitlines()[0][:300]}") from e
    return joined


def image_graph(vlm: VLM, module_for: Callable[[nn.Module, nn.Module | None], nn.Module], example: torch.Tensor,
                output: str, recipe: dict | None) -> "onnx.ModelProto":
    """vlm's image tower and head through `module_for(head, tower)` as one graph from `INPUT` to `output`
    (float [N, 3, H, W] in, or uint8 [N, H, W, 3] pixels when a recipe is given)."""
    tower, head = vlm.image_parts()
    module = tower.torch_module()  # None: the tower exists only as an ONNX graph, merged with the head
    if module is None:
        model = merged(tower, lambda raw: module_for(head, None), example, output)
    else:
        model = _torch_to_onnx(module_for(head, module).eval(), example, INPUT, OPSET, output)
    if model.ByteSize() >= 2**31:
        raise ZeroshiftError(f"the ONNX export of {vlm.spec} exceeds 2 GB, which one ONNX file cannot hold")
    return graphs.pixels_in(model, recipe, INPUT) if recipe is not None else model


def run_graph(path: Path, feed: np.ndarray, output: str = OUTPUT, threads: int | None = None) -> np.ndarray:
    """The file run by onnxruntime on `feed` (in chunks where its batch axis is fixed)."""
    from ..ort import session

    sess = session(path, threads)
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else max(len(feed), 1)
    return np.concatenate([sess.run([output], {INPUT: feed[i:i + step]})[0] for i in range(0, len(feed), step)])


def check_images(n: int, seed: int = 0) -> list[Image.Image]:
    """`n` probe images of several sizes and aspect ratios, so the check covers the resize rule."""
    return [probe_images(1, seed=seed + i, size=CHECK_SIZES[i % len(CHECK_SIZES)])[0] for i in range(n)]


def inputs(vlm: VLM, images: Sequence[Image.Image], recipe: dict | None) -> tuple[torch.Tensor, np.ndarray]:
    """(what PyTorch takes: vlm.image_transform of each [N, 3, H, W], what the graph takes: the recipe's
    uint8 [N, H, W, 3] pixels, or the same float tensor without a recipe)."""
    batch = torch.stack([vlm.image_transform(im) for im in images]).float()  # [N, 3, H, W]
    if recipe is None:
        return batch, np.ascontiguousarray(batch.numpy())
    return batch, np.stack([preprocess.resize_crop(im, recipe) for im in images])  # [N, H, W, 3] uint8


def _check(path: Path, vlm: VLM, weights: torch.Tensor, batch: torch.Tensor, feed: np.ndarray) -> dict:
    """Compare the file under onnxruntime (on `feed`) with the PyTorch VLM (on `batch`, the same images);
    ZeroshiftError if they disagree."""
    want = classify(vlm.encode_image(batch.to(_device(vlm))), weights).cpu()  # [B, C]
    got = torch.from_numpy(run_graph(path, feed)).float()  # [B, C]
    if got.shape != want.shape:
        raise ZeroshiftError(f"the exported classifier gives logits {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    if agree < 1.0 or not diff <= LOGIT_TOLERANCE:  # `not <=` also catches NaN
        raise ZeroshiftError(f"the ONNX export of {vlm.spec} disagrees with PyTorch on {len(batch)} check images "
                             f"(top-1 agreement {agree:.3f}, max |logit difference| {diff:.3g}); nothing was written")
    return {"images": len(batch), "top1_agreement": agree, "max_abs_logit_diff": diff}


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """`module` in eval mode inside the block; each submodule gets its own mode back after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


_eval_mode = eval_mode


def check_out(out: str | os.PathLike, folder: bool = False) -> Path:
    """`out` as a Path whose parent folder exists; a one-line ZeroshiftError for a missing parent, a parent
    that is a file, or (`folder` False) an existing folder where a file goes, (`folder` True) a file
    where a folder goes."""
    out = user_path(out)
    parent = out.parent
    if not parent.exists():
        raise ZeroshiftError(f"--out {out}: the folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise ZeroshiftError(f"--out {out}: {parent} is a file, not a folder")
    if not folder and out.is_dir():
        raise ZeroshiftError(f"--out {out} is a folder; give a file name such as {out / 'classifier.onnx'}")
    if folder and out.exists() and not out.is_dir():
        raise ZeroshiftError(f"--out {out} is a file; --towers writes a folder (image.onnx, text.onnx, "
                             "tokenizer.json): give a folder name")
    return out


def float_path(out: Path) -> Path:
    """Where --keep-float puts the float graph beside an int8 one: NAME.float.onnx for NAME.onnx."""
    return out.with_name((out.name[:-5] if out.name.endswith(".onnx") else out.name) + ".float.onnx")


def publish(out: Path, data: bytes, sidecar: dict) -> Path:
    """Write the graph `data` to `out`, then its sidecar `<out>.json`. An old sidecar is removed just before
    the new graph takes the name, so a kill anywhere leaves the old pair, or the new graph alone (rerun the
    export), never a sidecar describing another graph."""
    side = preprocess.sidecar_path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        side.unlink(missing_ok=True)  # the old one must not outlive its graph, even across a kill
    write_json(side, {**sidecar, "file": out.name, "sha256": hashlib.sha256(data).hexdigest()})
    return out


def provenance(vlm: VLM) -> dict:
    """The model spec, its teacher and (for a run) the specs it was built from."""
    from ..version import __version__

    config = getattr(vlm, "run_config", None) or {}
    keys = ("kind", "teacher", "encoder", "student", "image", "text")
    return {"model": vlm.spec, "teacher": config.get("teacher"),
            "run": {k: config[k] for k in keys if k in config} or None, "zeroshift_version": __version__}


def _sidecar(model, vlm: VLM, names: list[str], templates: str | None, prompts: list[str],
             batch: torch.Tensor, recipe: dict | None, pixels: bool, report: dict | None) -> dict:
    """What a runtime needs beside the graph: labels, prompts, input, preprocessing, provenance."""
    h, w = batch.shape[-2:]
    if pixels:
        spec_in = {"name": INPUT, "shape": ["batch", h, w, 3], "dtype": "uint8", "layout": "nhwc", "channels": "rgb"}
    else:
        spec_in = {"name": INPUT, "shape": ["batch", 3, h, w], "dtype": "float32", "layout": "nchw",
                   "channels": "rgb"}
    return {
        "format": "onnx", "kind": "classifier", **provenance(vlm),
        "labels": names, "templates": templates or "default", "prompts": prompts,
        "input": spec_in,
        "output": {"name": OUTPUT, "shape": ["batch", len(names)], "logit_scale": 100.0},
        "preprocess": recipe and {**recipe, "in_graph": pixels},  # without pixels: the graph wants pixels as recipe['pixels'] says
        "image_transform": repr(vlm.image_transform),
        "opset": [{"domain": o.domain or "ai.onnx", "version": o.version} for o in model.opset_import],
        "precision": "float32", "int8": None, "check": report,
    }


def export_classifier(
    vlm: VLM, labels: Sequence[str], out: str | os.PathLike, templates: str | None = None, check: bool = True,
    check_batch: torch.Tensor | None = None, input: str = "pixels", int8: "Int8 | None" = None,
    keep_float: bool = False,
) -> Path:
    """Write `out` (one ONNX file: uint8 pixels [N, H, W, 3], or with input='float' images [N, 3, H, W]
    after vlm.image_transform, -> logits [N, C]) and its sidecar `<out>.json`. `templates` is a template
    set name or file (default: the 'default' set); `check_batch` (input='float' only) replaces the probe
    images used to check the file against PyTorch. With `int8`, `out` is the int8 graph, refused below
    its agreement threshold; `keep_float` also writes the float one (NAME.float.onnx), refused or not.

    Everything is built and checked in a temporary folder before a file takes its name (publish).
    Temporary files a killed export of `out` left (older than STALE_TEMP_S) are removed first."""
    if input not in INPUTS:
        raise ZeroshiftError(f"--input must be one of {', '.join(INPUTS)}; got {input!r}")
    names = check_classnames(list(labels))
    prompts = get_templates(templates, None)
    out = check_out(out)
    pixels = input == "pixels"
    recipe = transform_recipe(vlm.image_transform) if pixels else _describable(vlm.image_transform)
    for name in (out.name, out.name + ".json"):
        clean_temp(out.parent, older_than=STALE_TEMP_S, name=name)
    if check_batch is not None and pixels:
        raise ZeroshiftError("check_batch holds transformed images; with input='pixels' the check starts from images")
    if check_batch is None:
        batch, feed = inputs(vlm, check_images(EXPORT_BATCH + CHECK_BATCH), recipe if pixels else None)
        checked = batch[EXPORT_BATCH:], feed[EXPORT_BATCH:]
    else:
        batch = check_batch.float().cpu()  # [B, 3, H, W]
        feed = np.ascontiguousarray(batch.numpy())
        checked = batch, feed
    with eval_mode(vlm), tempfile.TemporaryDirectory(prefix="zeroshift-export-") as work:
        weights = zeroshot_weights(vlm, names, prompts)  # [C, d]
        model = image_graph(vlm, lambda head, tower: Logits(head, weights, tower), batch[:EXPORT_BATCH], OUTPUT,
                            recipe if pixels else None)
        data = model.SerializeToString()
        float_file = Path(work) / "float.onnx"
        float_file.write_bytes(data)
        report = _check(float_file, vlm, weights, *checked) if check else None
        sidecar = _sidecar(model, vlm, names, templates, prompts, batch, recipe, pixels, report)
        if int8 is None:
            return publish(out, data, sidecar)
        from .quantize import Refused, classifier_int8

        try:
            qdata, quant = classifier_int8(vlm, float_file, Path(work), recipe, pixels, int8)
        except Refused as e:
            if keep_float:
                publish(float_path(out), data, sidecar)
                raise Refused(f"{e}; the float graph was written to {float_path(out)}") from None
            raise Refused(f"{e}; nothing was written (--keep-float writes the float graph anyway)") from None
        if keep_float:
            publish(float_path(out), data, sidecar)
        return publish(out, qdata, {**sidecar, "precision": "int8", "int8": quant,
                                    "float_file": float_path(out).name if keep_float else None})


def _describable(transform) -> dict | None:
    """The recipe of a transform, for the sidecar of a float-input graph; None when it has none."""
    try:
        return transform_recipe(transform)
    except ZeroshiftError:
        return None
