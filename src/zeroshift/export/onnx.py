"""A VLM plus fixed labels -> one ONNX classifier: transformed images [N, 3, H, W] -> logits [N, C].

    logits = 100 * normalize(image_head(image_tower(images))) @ W.T

with W [C, d] the zero-shot weights of the labels (zeroshot.classifier.zeroshot_weights), stored in
the graph. A PyTorch image tower is exported with its head in one piece; an ONNX-only tower (an
`onnx:` spec, `open-nsfw`) is merged with the exported head by onnx.compose. A sidecar `<out>.json`
records labels, templates, input size, the image transform and the VLM spec, since the graph starts
after preprocessing. Every export is run by onnxruntime on a check batch and refused unless its
top-1 equals PyTorch's and its logits agree to LOGIT_TOLERANCE.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.templates import get_templates
from ..errors import ZeroshiftError
from ..io import atomic_path, clean_temp, write_json
from ..models.transforms import probe_batch
from ..models.onnx_export import OPSET, to_onnx
from ..models.vlm import VLM
from ..zeroshot.classifier import check_classnames, classify, zeroshot_weights
from ..paths import user_path

if TYPE_CHECKING:
    import onnx

INPUT, OUTPUT = "images", "logits"
LOGIT_TOLERANCE = 1e-2  # max |logit difference| allowed (logits are 100 * cosine)
EXPORT_BATCH, CHECK_BATCH = 2, 8  # different sizes, so the check also exercises the dynamic batch axis
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


def _torch_to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, opset: int) -> "onnx.ModelProto":
    """The module on the device of its weights (the class weights join the tower's), through the one exporter."""
    device = _device(module)
    return to_onnx(module.to(device), example.to(device), input_name, OUTPUT, opset)


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _merged(tower, head: nn.Module, weights: torch.Tensor, example: torch.Tensor) -> "onnx.ModelProto":
    """An ONNX-only tower (OnnxImageEncoder) joined to the exported head: images [N, 3, H, W] -> logits."""
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
    head_model = _torch_to_onnx(Logits(head, weights).eval(), torch.from_numpy(raw), "features", opset)

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
        merged = compose.merge_models(model, head_model, io_map=[(_TOWER + tower.output, "features")],
                                      outputs=[OUTPUT])
        onnx.checker.check_model(merged)
    except Exception as e:  # noqa: BLE001 - onnx raises ValueError, TypeError, ValidationError
        raise ZeroshiftError(f"could not join the ONNX graph of {tower.spec} to its head: "
                             f"{str(e).splitlines()[0][:300]}") from e
    return merged


def _run(path: Path, batch: torch.Tensor) -> np.ndarray:
    """The exported file run by onnxruntime on `batch` (in chunks where its batch axis is fixed)."""
    from ..models.onnx_encoder import session

    sess = session(path)
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else len(batch)
    x = batch.float().cpu().numpy()
    return np.concatenate([sess.run([OUTPUT], {INPUT: x[i:i + step]})[0] for i in range(0, len(x), step)])


def _check(path: Path, vlm: VLM, weights: torch.Tensor, batch: torch.Tensor) -> dict:
    """Compare the file under onnxruntime with the PyTorch VLM on `batch`; ZeroshiftError if they disagree."""
    want = classify(vlm.encode_image(batch.to(_device(vlm))), weights).cpu()  # [B, C]
    got = torch.from_numpy(_run(path, batch)).float()  # [B, C]
    if got.shape != want.shape:
        raise ZeroshiftError(f"the exported classifier gives logits {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    if agree < 1.0 or not diff <= LOGIT_TOLERANCE:  # `not <=` also catches NaN
        raise ZeroshiftError(f"the ONNX export of {vlm.spec} disagrees with PyTorch on {len(batch)} check images "
                             f"(top-1 agreement {agree:.3f}, max |logit difference| {diff:.3g}); nothing was written")
    return {"images": len(batch), "top1_agreement": agree, "max_abs_logit_diff": diff}


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """`module` in eval mode inside the block; each submodule gets its own mode back after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _sidecar(out: Path, data: bytes, model, vlm: VLM, names: list[str], templates: str | None,
             prompts: list[str], batch: torch.Tensor, report: dict | None) -> dict:
    """What a runtime needs beside the graph: labels, prompts, input size, preprocessing, provenance."""
    from ..version import __version__

    return {
        "format": "onnx",
        "file": out.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "model": vlm.spec,
        "labels": names,
        "templates": templates or "default",
        "prompts": prompts,
        "input": {"name": INPUT, "shape": ["batch", *batch.shape[1:]], "dtype": "float32", "layout": "nchw"},
        "output": {"name": OUTPUT, "shape": ["batch", len(names)], "logit_scale": 100.0},
        "image_transform": repr(vlm.image_transform),
        "opset": [{"domain": o.domain or "ai.onnx", "version": o.version} for o in model.opset_import],
        "check": report,
        "zeroshift_version": __version__,
    }


def export_classifier(
    vlm: VLM, labels: Sequence[str], out: str | os.PathLike, templates: str | None = None, check: bool = True,
    check_batch: torch.Tensor | None = None,
) -> Path:
    """Write `out` (one ONNX file: images [N, 3, H, W] after vlm.image_transform -> logits [N, C]) and its
    sidecar `<out>.json`. `templates` is a template set name or file (default: the 'default' set);
    `check_batch` replaces the probe images used to check the file against PyTorch.

    The graph is written first, checked, and renamed into place; the sidecar last. An old sidecar is
    removed just before the new graph takes the name, so a kill anywhere leaves the old pair, or the
    new graph alone (rerun the export), never a sidecar describing another graph. Temporary files a
    killed export of `out` left (older than STALE_TEMP_S) are removed first."""
    names = check_classnames(list(labels))
    prompts = get_templates(templates, None)
    out = user_path(out)
    if out.is_dir():
        raise ZeroshiftError(f"out {out} is a folder; give a file name such as {out / 'classifier.onnx'}")
    sidecar = out.with_name(out.name + ".json")
    for name in (out.name, sidecar.name):
        clean_temp(out.parent, older_than=STALE_TEMP_S, name=name)
    tower, head = vlm.image_parts()
    module = tower.torch_module()  # None: the tower exists only as an ONNX graph, merged with the head
    if check_batch is None:
        batch = probe_batch(vlm.image_transform, EXPORT_BATCH + CHECK_BATCH)  # [B, 3, H, W]
        example, checked = batch[:EXPORT_BATCH], batch[EXPORT_BATCH:]
    else:
        batch = check_batch.float().cpu()  # [B, 3, H, W]
        example, checked = batch[:EXPORT_BATCH], batch
    with _eval_mode(vlm):
        weights = zeroshot_weights(vlm, names, prompts)  # [C, d]
        if module is None:
            model = _merged(tower, head, weights, example)
        else:
            model = _torch_to_onnx(Logits(head, weights, module).eval(), example, INPUT, OPSET)
        if model.ByteSize() >= 2**31:
            raise ZeroshiftError(f"the ONNX export of {vlm.spec} exceeds 2 GB, which one ONNX file cannot hold")
        data = model.SerializeToString()
        with atomic_path(out) as tmp:  # the graph first, checked before it takes the name; the sidecar last
            tmp.write_bytes(data)
            report = _check(tmp, vlm, weights, checked) if check else None
            sidecar.unlink(missing_ok=True)  # the old one must not outlive its graph, even across a kill
        write_json(sidecar, _sidecar(out, data, model, vlm, names, templates, prompts, batch, report))
    return out
