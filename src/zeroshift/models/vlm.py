"""The three interfaces everything else is built on: ImageEncoder, TextEncoder and VLM.

An ImageEncoder maps a batch of transformed images [N, 3, H, W] to features [N, dim]; a TextEncoder
maps a list of strings to [M, dim]; a VLM has both in one joint space. Outputs are raw (not
normalised); consumers normalise where the method says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from ..errors import ZeroshiftError

ImageTransform = Callable[[Image.Image], torch.Tensor]


class ImageEncoder(nn.Module):
    """images [N, 3, H, W] -> features [N, dim]. `image_transform` turns an RGB PIL image into one input."""

    spec: str
    dim: int
    image_transform: ImageTransform
    runtime_parts: tuple[str, ...] = ()  # child encoders a runtime accelerates instead of the whole

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: features [N, dim] as float32, no gradients."""
        with torch.inference_mode():
            return self(images).float()

    def torch_module(self) -> nn.Module | None:
        """The PyTorch module computing these features from transformed images, which an exporter traces;
        None for a tower that exists only as an ONNX graph (see `onnx_file`)."""
        return self

    def onnx_file(self) -> Path | None:
        """The ONNX graph this tower runs, when it runs one (an exporter then joins that graph)."""
        return None


class ModuleEncoder(ImageEncoder):
    """An image encoder that is one nn.Module (a timm or torchvision backbone, a student network)."""

    def __init__(self, model: nn.Module, dim: int, image_transform: ImageTransform, spec: str) -> None:
        super().__init__()
        self.model, self.dim, self.image_transform, self.spec = model, dim, image_transform, spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)  # [N, dim]


@dataclass(frozen=True)
class TextParts:
    """What an exporter needs of a text tower: `module` maps token ids and their mask (int64 [N, L] each)
    to the tower's features [N, dim], and `tokenizer` (a `tokenizers.Tokenizer`, what a tokenizer.json
    holds) makes those ids from texts, truncated to `max_length` tokens (special ones included) and
    padded with `pad_id` to the longest text of a batch (`padding` 'longest') or to max_length."""

    module: nn.Module
    tokenizer: Any
    max_length: int
    padding: str
    pad_id: int
    spec: str


class HeadedText(nn.Module):
    """A text module (ids, mask) -> features followed by a head: what a TowersVLM's text side computes."""

    def __init__(self, inner: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.inner, self.head = inner, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(input_ids, attention_mask).float())  # [N, dim]


class TextEncoder(nn.Module):
    """texts -> features [M, dim]."""

    spec: str
    dim: int

    def forward(self, texts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Inference: features [M, dim] as float32, no gradients."""
        with torch.inference_mode():
            return self(list(texts)).float()

    def text_parts(self) -> TextParts:
        """The module on token ids and the tokenizer an exporter writes (see TextParts); ZeroshiftError for a
        tower that tokenises its own way."""
        raise ZeroshiftError(f"the text tower {self.spec} ({type(self).__name__}) cannot be exported: it turns texts "
                             "into features in its own Python code, which no tokenizer.json and graph can describe")


class VLM(nn.Module):
    """A vision-language model: images and texts into one joint space of size `dim`."""

    spec: str
    dim: int
    image_transform: ImageTransform
    runtime_parts: tuple[str, ...] = ()  # image towers a runtime accelerates (models/runtime.accelerate)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def image_parts(self) -> tuple[ImageEncoder, nn.Module]:
        """(image tower, head from its features into the joint space): what an exporter needs."""
        raise ZeroshiftError(f"{self.spec} has no separate image tower and head to export")

    def text_side(self) -> TextEncoder:
        """The text side as a TextEncoder, for a model that borrows it (a bridged or distilled VLM's
        teacher). Here the whole VLM stays behind it; TowersVLM gives its text tower alone."""
        return VLMTextTower(self)

    def cost(self) -> dict[str, dict[str, int | None]]:
        """What one image and one label set cost: {"image": {"parameters": N}, "text": {"parameters": M}}.
        The image path is what runs once per image (image_parts: tower and head), the text side what runs
        once per label set (everything else); None where the VLM names no separate image path."""
        try:
            image = weights(*self.image_parts())
        except ZeroshiftError:
            return {"image": {"parameters": None}, "text": {"parameters": None}}
        return {"image": {"parameters": sum(image.values())}, "text": {"parameters": _rest(weights(self), image)}}

    def text_parts(self) -> TextParts:
        """The text side into the joint space as TextParts: what an exporter of both towers needs."""
        raise ZeroshiftError(f"{self.spec} has no separate text tower to export")


class TowersVLM(VLM):
    """A VLM made of an image encoder and a text encoder whose outputs already share a space,
    optionally through trainable heads (a bridge, a projection) on either side."""

    runtime_parts = ("image",)

    def __init__(
        self,
        image: ImageEncoder,
        text: TextEncoder,
        spec: str,
        image_head: nn.Module | None = None,
        text_head: nn.Module | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.image, self.text = image, text
        self.image_head = image_head or nn.Identity()
        self.text_head = text_head or nn.Identity()
        self.spec = spec
        self.dim = dim if dim is not None else text.dim
        self.image_transform = image.image_transform

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.image_head(self.image.encode_image(images)).float()

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.inference_mode():
            return self.text_head(self.text.encode_text(texts)).float()

    def image_parts(self) -> tuple[ImageEncoder, nn.Module]:
        """A tower that is itself a VLM (a VLM bridged into another) is opened up, its head running first."""
        if isinstance(self.image, VLM):
            tower, inner = self.image.image_parts()
            return tower, nn.Sequential(inner, self.image_head)
        return self.image, self.image_head

    def text_side(self) -> TextSide:
        return TextSide(self.text, self.text_head, self.spec, self.dim)

    def cost(self) -> dict[str, dict[str, int | None]]:
        """A weight both sides reach (open_clip's text tower holds the whole model) counts on the image side."""
        image = weights(*self.image_parts())
        text = weights(self.text, self.text_head)
        return {"image": {"parameters": sum(image.values())}, "text": {"parameters": _rest(text, image)}}


    def text_parts(self) -> TextParts:
        """The text encoder's parts with the text head after them."""
        parts = self.text.text_parts()
        if isinstance(self.text_head, nn.Identity):
            return parts
        return replace(parts, module=HeadedText(parts.module, self.text_head))


class TextSide(TextEncoder):
    """A VLM's text side alone: its text tower and the head after it, computing exactly what that VLM's
    encode_text computes. A bridged or distilled VLM holds its teacher's TextSide, never the teacher's
    image tower (compose.text_side builds one without building the image side where it can)."""

    def __init__(self, text: TextEncoder, head: nn.Module | None, spec: str, dim: int) -> None:
        super().__init__()
        self.text, self.head = text, head or nn.Identity()
        self.spec, self.dim = spec + "/text", int(dim)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.head(self.text(list(texts)))  # [M, dim]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """The same operations as TowersVLM.encode_text, so embeddings are bit-identical to the VLM's."""
        with torch.inference_mode():
            return self.head(self.text.encode_text(texts)).float()  # [M, dim]

    def text_parts(self) -> TextParts:
        """The text tower's parts with the head after them, as TowersVLM gives them."""
        parts = self.text.text_parts()
        return parts if isinstance(self.head, nn.Identity) else replace(parts, module=HeadedText(parts.module, self.head))


def weights(*modules: nn.Module) -> dict[object, int]:
    """The weights reachable from `modules`, each once: {key: element count}, keyed by parameter identity
    and, for a tower run from an ONNX graph (`graph_parameters`), by its graph file."""
    found: dict[object, int] = {}
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        for m in module.modules():
            count = getattr(m, "graph_parameters", None)
            n = count() if callable(count) else 0
            if n:
                found[("onnx", str(m.onnx_file()))] = int(n)
        found.update((id(p), p.numel()) for p in module.parameters())
    return found


def _rest(found: dict[object, int], minus: dict[object, int]) -> int:
    return sum(n for key, n in found.items() if key not in minus)


class VLMTextTower(TextEncoder):
    """The text side of a VLM as a TextEncoder, holding the whole VLM (for a VLM that does not split)."""

    def __init__(self, vlm: VLM) -> None:
        super().__init__()
        self.vlm, self.spec, self.dim = vlm, vlm.spec + "/text", vlm.dim

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.vlm.encode_text(texts)  # [M, dim]

    def text_parts(self) -> TextParts:
        return self.vlm.text_parts()
