"""openclip:ARCH[@TAG]: an open_clip model as a two-tower VLM.

TAG is a pretrained name open_clip lists for ARCH (fetched from the hub), a local weights file, or
`random` (the architecture with random weights). Without a TAG the first pretrained name open_clip
lists for ARCH is used. ARCH may also be an open_clip `hf-hub:org/repo` name (no TAG).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import MissingWeights, SpecError
from . import hub
from .vlm import ImageEncoder, ImageTransform, TextEncoder, TextParts, TextSide, TowersVLM
from ..paths import user_path

TEXT_BATCH = 256


class OpenClipImage(ImageEncoder):
    """The visual tower of an open_clip model: images [N, 3, H, W] -> [N, embed_dim]."""

    def __init__(self, visual: nn.Module, dim: int, image_transform: ImageTransform, spec: str) -> None:
        super().__init__()
        self.visual, self.dim, self.image_transform, self.spec = visual, dim, image_transform, spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class OpenClipText(TextEncoder):
    """The text tower of an open_clip model (the model's encode_text with its tokenizer): [M, embed_dim]."""

    def __init__(self, model: nn.Module, tokenizer, dim: int, spec: str) -> None:
        super().__init__()
        self.model, self.tokenizer, self.dim, self.spec = model, tokenizer, dim, spec

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(list(texts)).to(device))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        with torch.inference_mode():
            return torch.cat([self(texts[i:i + TEXT_BATCH]).float() for i in range(0, max(len(texts), 1), TEXT_BATCH)])

    def text_parts(self) -> TextParts:
        """encode_text on ids padded to the context length, and CLIP's BPE as a tokenizers Tokenizer."""
        from open_clip.tokenizer import SimpleTokenizer

        from .clip_bpe import from_simple_tokenizer

        if not isinstance(self.tokenizer, SimpleTokenizer):
            return super().text_parts()
        return TextParts(_EncodeText(self.model), from_simple_tokenizer(self.tokenizer),
                         int(self.tokenizer.context_length), "max_length", 0, self.spec)


class _EncodeText(nn.Module):
    """open_clip's encode_text on ids [N, context] and their mask (padding ids are 0 already; the mask is
    applied so that the graph keeps the input other runtimes feed)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids * attention_mask)  # [N, embed_dim]


def resolve(arg: str) -> tuple[str, str | None, str]:
    """`ARCH[@TAG]` -> (arch, pretrained for open_clip or None for random weights, canonical spec)."""
    import open_clip

    arch, sep, tag = arg.partition("@")
    if not arch:
        raise SpecError("openclip: needs an architecture, e.g. openclip:ViT-B-32@laion2b_s34b_b79k")
    if arch.startswith("hf-hub:"):
        if sep:
            raise SpecError(f"openclip:{arch} names its weights already; drop the @{tag}")
        return arch, None, f"openclip:{arch}"
    if arch not in open_clip.list_models():
        raise SpecError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not sep:
        if not tags:
            raise SpecError(f"open_clip lists no pretrained weights for {arch}: "
                            f"give openclip:{arch}@/path/to/weights or openclip:{arch}@random")
        tag = tags[0]
    if tag == "random":
        return arch, None, f"openclip:{arch}@random"
    if tag in tags:
        return arch, tag, f"openclip:{arch}@{tag}"
    file = user_path(tag)
    if file.is_file():
        return arch, str(file.resolve()), f"openclip:{arch}@{file.resolve()}"
    if "/" in tag or "\\" in tag or file.suffix in (".safetensors", ".bin", ".pt", ".pth"):
        raise MissingWeights(f"no weights file at {tag} for openclip:{arch}")
    raise SpecError(f"unknown pretrained tag {tag!r} for {arch}; known: {', '.join(tags) or 'none'}, "
                    "or a local file, or random")


def _build(arch: str, pretrained: str | None, spec: str):
    """(model, preprocess, tokenizer) from open_clip, its failures as one-line MissingWeights."""
    import open_clip

    from_hub = arch.startswith("hf-hub:") or (pretrained is not None and not Path(pretrained).is_file())
    instead = f"openclip:{arch}@/path/to/weights.safetensors (or @random for random weights)"
    if from_hub and arch.startswith("hf-hub:"):
        instead = "openclip:ARCH@/path/to/weights.safetensors with the architecture the hub repo names"
    try:
        with hub.fetching(spec, instead, (OSError, RuntimeError, ValueError)) if from_hub else nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
            tokenizer = open_clip.get_tokenizer(arch)
    except (OSError, RuntimeError, ValueError) as e:  # a local weights file (hub failures are MissingWeights)
        if pretrained is not None:
            raise MissingWeights(f"could not load {pretrained} into open_clip {arch}: {str(e).splitlines()[0][:200]}") from e
        raise
    return model.eval(), preprocess, tokenizer


def create(arg: str) -> TowersVLM:
    """Build an open_clip VLM from `ARCH[@TAG]`."""
    arch, pretrained, spec = resolve(arg)
    model, preprocess, tokenizer = _build(arch, pretrained, spec)
    dim = _embed_dim(model, arch)
    image = OpenClipImage(model.visual, dim, preprocess, spec + "/image")
    text = OpenClipText(model, tokenizer, dim, spec + "/text")
    return TowersVLM(image, text, spec=spec, dim=dim).eval()


def create_text(arg: str) -> TextSide:
    """The text side alone of the open_clip VLM `ARCH[@TAG]` names (a teacher's, for a bridged or
    distilled model): open_clip builds the whole model (it has no text-only constructor, and building the
    visual tower too keeps @random weights those of `create`), then the visual tower is dropped."""
    arch, pretrained, spec = resolve(arg)
    model, _, tokenizer = _build(arch, pretrained, spec)
    model.visual = None  # encode_text never reaches it; its weights are freed here
    dim = _embed_dim(model, arch)
    return TextSide(OpenClipText(model, tokenizer, dim, spec + "/text"), None, spec, dim).eval()


def _embed_dim(model: nn.Module, arch: str) -> int:
    import open_clip

    config = open_clip.get_model_config(arch) if not arch.startswith("hf-hub:") else None
    if config and "embed_dim" in config:
        return int(config["embed_dim"])
    with torch.inference_mode():
        return int(model.encode_text(open_clip.get_tokenizer(arch)(["a"])).shape[-1])
