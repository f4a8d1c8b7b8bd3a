"""hf-clip:ID: a transformers CLIPModel (hub id or local folder saved with save_pretrained) as a VLM.

The folder (or hub repo) must hold the model and its CLIPProcessor (image processor + tokenizer);
images are preprocessed by that image processor, texts tokenised by that tokenizer.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from .. import paths
from ..errors import SpecError, fetch_failed
from . import hub
from .vlm import ImageEncoder, TextEncoder, TextParts, TextSide, TowersVLM

TEXT_BATCH = 256


class ProcessorTransform:
    """RGB PIL -> [3, H, W] through a transformers image processor."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({self.image_processor!r})"  # the processor's full configuration

    def recipe(self) -> dict:
        """The processor's steps as models/transforms.recipe parts: resize (shortest edge or both sides, its
        resample), centre crop, rescale, normalise. Its own resize runs on tensors, which may differ from
        Pillow's by a grey level; the export's check against PyTorch measures what that changes."""
        p = self.image_processor
        size, crop = dict(getattr(p, "size", None) or {}), dict(getattr(p, "crop_size", None) or {})
        steps = []
        if getattr(p, "do_resize", False):
            names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
            how = names.get(int(getattr(p, "resample", 3)), "bicubic")
            if size.get("shortest_edge"):
                steps.append({"op": "resize", "edge": "short", "size": int(size["shortest_edge"]), "max_size": None,
                              "interpolation": how})
            elif size.get("height") and size.get("width"):
                steps.append({"op": "resize", "edge": "both", "size": [int(size["height"]), int(size["width"])],
                              "max_size": None, "interpolation": how})
            else:
                raise ValueError(f"resize {size}")
        if getattr(p, "do_center_crop", False):
            steps.append({"op": "center_crop", "size": [int(crop["height"]), int(crop["width"])]})
        if getattr(p, "do_pad", False):
            raise ValueError("padding")
        norm = getattr(p, "do_normalize", False)
        return {"steps": steps, "pixels": {
            "scale": float(p.rescale_factor) if getattr(p, "do_rescale", False) else 1.0,
            "mean": [float(v) for v in p.image_mean] if norm else [0.0] * 3,
            "std": [float(v) for v in p.image_std] if norm else [1.0] * 3}}


class HFClipImage(ImageEncoder):
    """vision_model pooled output -> visual_projection: [N, projection_dim]."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module, dim: int, image_transform, spec: str) -> None:
        super().__init__()
        self.vision_model, self.projection = vision_model, projection
        self.dim, self.image_transform, self.spec = dim, image_transform, spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=images).pooler_output  # [N, hidden]
        return self.projection(pooled)


class HFClipText(TextEncoder):
    """text_model pooled (end-of-text) output -> text_projection: [M, projection_dim]."""

    def __init__(self, text_model: nn.Module, projection: nn.Module, tokenizer, max_length: int,
                 dim: int, spec: str) -> None:
        super().__init__()
        self.text_model, self.projection, self.tokenizer = text_model, projection, tokenizer
        self.max_length, self.dim, self.spec = max_length, dim, spec

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.projection.weight.device
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        pooled = self.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        return self.projection(pooled)  # [M, dim]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        with torch.inference_mode():
            return torch.cat([self(texts[i:i + TEXT_BATCH]).float() for i in range(0, max(len(texts), 1), TEXT_BATCH)])

    def text_parts(self) -> TextParts:
        """The text model and projection on ids and mask, and the processor's fast tokenizer."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return super().text_parts()
        return TextParts(_OnIds(self.text_model, self.projection), backend, self.max_length, "longest",
                         int(self.tokenizer.pad_token_id or 0), self.spec)


class _OnIds(nn.Module):
    """text_model pooled output -> projection, on ids and mask [N, L]: [N, projection_dim]."""

    def __init__(self, text_model: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.text_model, self.projection = text_model, projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


def _source(arg: str) -> tuple[str, str]:
    """(folder or hub id, canonical spec) of `hf-clip:ARG`."""
    if not arg:
        raise SpecError("hf-clip: needs a hub id or folder, e.g. hf-clip:openai/clip-vit-base-patch32")
    source = paths.local_or_hub(arg, f"hf-clip:{arg}", "CLIP model folder")
    return source, f"hf-clip:{source}"


_INSTEAD = "hf-clip:/path/to/folder (saved with save_pretrained: model and CLIPProcessor)"


@contextlib.contextmanager
def _fetching(source: str, spec: str) -> Iterator[None]:
    """Load from a local folder (an OSError is fetch_failed) or from the hub through hub.fetching, which
    fails at once in one line when the hub cannot be reached."""
    if not Path(source).is_dir():
        with hub.fetching(spec, _INSTEAD):
            yield
        return
    try:
        yield
    except OSError as e:
        raise fetch_failed(spec, _INSTEAD, e) from e


def create(arg: str) -> TowersVLM:
    """Build a transformers CLIP VLM from a hub id or a local folder."""
    from transformers import CLIPModel, CLIPProcessor

    source, spec = _source(arg)
    with _fetching(source, spec):
        model, processor = CLIPModel.from_pretrained(source), CLIPProcessor.from_pretrained(source)
    model = model.float().eval()
    dim = int(model.config.projection_dim)
    image = HFClipImage(model.vision_model, model.visual_projection, dim,
                        ProcessorTransform(processor.image_processor), spec + "/image")
    text = HFClipText(model.text_model, model.text_projection, processor.tokenizer,
                      int(model.config.text_config.max_position_embeddings), dim, spec + "/text")
    return TowersVLM(image, text, spec=spec, dim=dim).eval()


def create_text(arg: str) -> TextSide:
    """The text side alone of `hf-clip:ARG` (a teacher's, for a bridged or distilled model): only the
    checkpoint's text transformer and text projection are loaded (CLIPTextModelWithProjection), with the
    tokenizer `create` uses; the vision weights are never read into memory."""
    from transformers import CLIPConfig, CLIPProcessor, CLIPTextModelWithProjection
    from transformers.utils import logging

    source, spec = _source(arg)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the vision weights left unread are the point, not a warning
    try:
        with _fetching(source, spec):
            config = CLIPConfig.from_pretrained(source)
            text_config = config.text_config
            text_config.projection_dim = config.projection_dim
            model = CLIPTextModelWithProjection.from_pretrained(source, config=text_config).float().eval()
            tokenizer = CLIPProcessor.from_pretrained(source).tokenizer
    finally:
        logging.set_verbosity(verbosity)
    dim = int(config.projection_dim)
    text = HFClipText(model.text_model, model.text_projection, tokenizer, int(text_config.max_position_embeddings),
                      dim, spec + "/text")
    return TextSide(text, None, spec, dim).eval()
