"""Both towers of a VLM, for labels chosen at run time: FOLDER/image.onnx, text.onnx and tokenizer.json.

    image.onnx      images (uint8 pixels [N, H, W, 3], or float [N, 3, H, W]) -> embeddings [N, d], unit rows
    text.onnx       input_ids, attention_mask (int64 [N, L]) -> embeddings [N, d], unit rows
    tokenizer.json  the text tower's tokenizer for the `tokenizers` library, truncation and padding set

in the VLM's joint space: a bridged or distilled run's image tower with the teacher's text tower, an
aligned run's towers with their projection heads, conse:'s ConSE image side with its sentence encoder,
openclip:'s and hf-clip:'s own towers. Zero-shot logits are 100 * image @ W.T with W the labels' class
weights (export/run.py's class_weights, zeroshot.classifier's recipe). Each graph is checked against
PyTorch: the image one on probe images (preprocessing included), the text one on prompts tokenised by the
written tokenizer.json through the tokenizers library, so the ids are checked too. A VLM whose text tower
has no such form (tiny-clip's hashed trigrams) is refused before anything is built.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.templates import get_templates
from ..errors import ZeroshiftError
from ..io import clean_temp, write_text
from ..models.onnx_export import OPSET, to_onnx
from ..models.transforms import recipe as transform_recipe
from ..models.vlm import VLM, TextParts
from . import graph as graphs
from . import onnx as exporter
from . import run as runner

if TYPE_CHECKING:
    from .quantize import Int8

IMAGE, TEXT, TOKENIZER = "image.onnx", "text.onnx", "tokenizer.json"
OUTPUT = graphs.EMBEDDINGS
TEXT_INPUTS = ("input_ids", "attention_mask")
EMBED_TOLERANCE = 1e-4  # max |difference| of a unit embedding's entries (logits, 100 * cosine, to ~1e-2)
CHECK_TEXTS = ("a photo of a cat.", "A DOG, running fast!", "", "naïve café, l'été; 42 😀",
               "a very long caption " * 90)  # the last is longer than any tower's limit: truncation is checked


class ImageEmbeddings(nn.Module):
    """images -> normalize(head(tower(images))): [N, d]."""

    def __init__(self, head: nn.Module, tower: nn.Module | None = None) -> None:
        super().__init__()
        self.tower, self.head = tower, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.tower(x) if self.tower is not None else x
        return F.normalize(self.head(feats.flatten(1).float()), dim=-1)  # [N, d]


class TextEmbeddings(nn.Module):
    """(ids, mask) -> normalize(text module): [N, d]."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.module(input_ids, attention_mask).float(), dim=-1)  # [N, d]


def text_parts(vlm: VLM) -> TextParts:
    """vlm's exportable text side, or one line naming the part that is not and why."""
    try:
        return vlm.text_parts()
    except ZeroshiftError as e:
        raise ZeroshiftError(f"--towers needs {vlm.spec}'s text tower as a graph, but {e}; export a classifier "
                             "with fixed --labels instead") from None


def tokenizer_for(parts: TextParts):
    """A copy of the tower's tokenizer with its truncation and padding set, as tokenizer.json holds them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(parts.tokenizer.to_str())
    tokenizer.enable_truncation(parts.max_length)
    pad = tokenizer.id_to_token(parts.pad_id) or "[PAD]"
    length = parts.max_length if parts.padding == "max_length" else None
    tokenizer.enable_padding(pad_id=parts.pad_id, pad_token=pad, length=length)
    return tokenizer


def _compare(what: str, spec: str, want: torch.Tensor, got: np.ndarray) -> dict:
    got_t = torch.from_numpy(got).float()
    if got_t.shape != want.shape:
        raise ZeroshiftError(f"the exported {what} tower of {spec} gives {tuple(got_t.shape)}, PyTorch {tuple(want.shape)}")
    diff = float((got_t - want).abs().max())
    if not diff <= EMBED_TOLERANCE:  # `not <=` also catches NaN
        raise ZeroshiftError(f"the ONNX {what} tower of {spec} disagrees with PyTorch on {len(want)} check "
                             f"{'images' if what == 'image' else 'texts'} (max |embedding difference| {diff:.3g}); "
                             "nothing was written" + (" (--input float starts after the model's own preprocessing)"
                                                      if what == "image" else ""))
    return {"count": len(want), "max_abs_diff": diff}


def _text_graph(parts: TextParts, tokenizer) -> "object":
    ids = runner.tokenize(tokenizer, ["a photo of a cat.", "a dog"])
    example = tuple(torch.from_numpy(ids[k]) for k in TEXT_INPUTS)  # int64 [2, L] each
    axes = {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}
    module = TextEmbeddings(parts.module).eval()
    return to_onnx(module, example, TEXT_INPUTS, OUTPUT, OPSET, axes=axes)


def _sidecars(vlm: VLM, parts: TextParts, labels, templates, prompts, batch, recipe, pixels, image_model,
              text_model, checks: dict, names: dict) -> tuple[dict, dict]:
    base = {"format": "onnx", **exporter.provenance(vlm), "precision": "float32", "int8": None}
    h, w = batch.shape[-2:]
    image_in = ({"name": exporter.INPUT, "shape": ["batch", h, w, 3], "dtype": "uint8", "layout": "nhwc",
                 "channels": "rgb"} if pixels else
                {"name": exporter.INPUT, "shape": ["batch", 3, h, w], "dtype": "float32", "layout": "nchw",
                 "channels": "rgb"})
    opset = [{"domain": o.domain or "ai.onnx", "version": o.version} for o in image_model.opset_import]
    image = {**base, "kind": "image-tower", "labels": labels, "templates": templates or "default", "prompts": prompts,
             "input": image_in, "output": {"name": OUTPUT, "shape": ["batch", vlm.dim], "normalized": True},
             "logit_scale": 100.0, "text": names["text"], "tokenizer": TOKENIZER,
             "preprocess": recipe and {**recipe, "in_graph": pixels}, "image_transform": repr(vlm.image_transform),
             "opset": opset, "check": checks.get("image")}
    text = {**base, "kind": "text-tower", "text_model": parts.spec, "image": names["image"],
            "inputs": [{"name": n, "shape": ["batch", "tokens"], "dtype": "int64"} for n in TEXT_INPUTS],
            "output": {"name": OUTPUT, "shape": ["batch", vlm.dim], "normalized": True},
            "tokenizer": {"file": TOKENIZER, "max_length": parts.max_length, "padding": parts.padding,
                          "pad_id": parts.pad_id,
                          "ids": "tokenizer.json's ids with its special tokens (add_special_tokens), truncated to "
                                 "max_length; attention_mask 1 for a token, 0 for padding"},
            "opset": [{"domain": o.domain or "ai.onnx", "version": o.version} for o in text_model.opset_import],
            "check": checks.get("text")}
    return image, text


def export_towers(vlm: VLM, out: str | os.PathLike, labels: Sequence[str] | None = None, templates: str | None = None,
                  check: bool = True, input: str = "pixels", int8: "Int8 | None" = None,
                  keep_float: bool = False) -> Path:
    """Write the folder `out` (image.onnx, text.onnx, tokenizer.json, a sidecar beside each graph); returns it.
    `labels` (optional) are kept as the defaults a runner uses without --labels."""
    if input not in exporter.INPUTS:
        raise ZeroshiftError(f"--input must be one of {', '.join(exporter.INPUTS)}; got {input!r}")
    folder = exporter.check_out(out, folder=True)
    parts = text_parts(vlm)  # before any tracing: a text tower that cannot be exported fails at once
    tokenizer = tokenizer_for(parts)
    prompts = get_templates(templates, None)
    pixels = input == "pixels"
    recipe = transform_recipe(vlm.image_transform) if pixels else exporter._describable(vlm.image_transform)
    batch, feed = exporter.inputs(vlm, exporter.check_images(exporter.EXPORT_BATCH + exporter.CHECK_BATCH),
                                  recipe if pixels else None)
    texts = [t.format(c=c) for c in (labels or []) for t in prompts][:64] + list(CHECK_TEXTS)
    with exporter.eval_mode(vlm), tempfile.TemporaryDirectory(prefix="zeroshift-towers-") as work:
        work = Path(work)
        image_model = exporter.image_graph(vlm, lambda head, tower: ImageEmbeddings(head, tower),
                                           batch[:exporter.EXPORT_BATCH], OUTPUT, recipe if pixels else None)
        text_model = _text_graph(parts, tokenizer)
        files = {"image": work / IMAGE, "text": work / TEXT}
        files["image"].write_bytes(image_model.SerializeToString())
        files["text"].write_bytes(text_model.SerializeToString())
        checks = {}
        if check:
            want = F.normalize(vlm.encode_image(batch[exporter.EXPORT_BATCH:]), dim=-1).cpu()  # [B, d]
            got = quantize_run(files["image"], {exporter.INPUT: feed[exporter.EXPORT_BATCH:]})
            checks["image"] = _compare("image", vlm.spec, want, got)
            want = F.normalize(vlm.encode_text(texts), dim=-1).cpu()  # [T, d]
            checks["text"] = _compare("text", vlm.spec, want, quantize_run(files["text"], runner.tokenize(tokenizer, texts)))
        float_names = {"image": IMAGE, "text": TEXT} if int8 is None else {"image": "image.float.onnx",
                                                                           "text": "text.float.onnx"}
        sidecars = _sidecars(vlm, parts, labels, templates, prompts, batch, recipe, pixels, image_model, text_model,
                             checks, float_names)
        for name in (IMAGE, TEXT, TOKENIZER, *float_names.values()) if folder.is_dir() else ():
            for temp in (name, name + ".json"):  # what a killed export of this folder left
                clean_temp(folder, older_than=exporter.STALE_TEMP_S, name=temp)
        if int8 is None:
            _publish(folder, tokenizer, files, sidecars, float_names)
            return folder
        from .quantize import Refused, towers_int8

        try:
            qfiles, records = towers_int8(vlm, files, work, recipe, pixels, labels, prompts, tokenizer, int8)
        except Refused as e:
            if keep_float:
                _publish(folder, tokenizer, files, sidecars, float_names)
                raise Refused(f"{e}; the float towers were written to {folder} ({float_names['image']}, "
                              f"{float_names['text']})") from None
            raise Refused(f"{e}; nothing was written (--keep-float writes the float towers anyway)") from None
        if keep_float:
            _publish(folder, tokenizer, files, sidecars, float_names)
        names = {"image": IMAGE, "text": TEXT}
        image_side, text_side = sidecars
        image_side = {**image_side, "text": TEXT, "precision": "int8", "int8": records["image"],
                      "float_file": float_names["image"] if keep_float else None}
        text_side = {**text_side, "image": IMAGE, "precision": "int8", "int8": records["text"],
                     "float_file": float_names["text"] if keep_float else None}
        _publish(folder, tokenizer, qfiles, (image_side, text_side), names)
    return folder


def quantize_run(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from .quantize import run

    return run(path, inputs, OUTPUT)


def _publish(folder: Path, tokenizer, files: dict, sidecars: tuple[dict, dict], names: dict) -> None:
    """tokenizer.json, then the text graph, then the image graph (the entry point), each with its sidecar."""
    folder.mkdir(exist_ok=True)
    write_text(folder / TOKENIZER, tokenizer.to_str(pretty=True))
    exporter.publish(folder / names["text"], files["text"].read_bytes(), sidecars[1])
    exporter.publish(folder / names["image"], files["image"].read_bytes(), sidecars[0])
