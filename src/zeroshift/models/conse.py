"""conse:IMAGE+TEXT: a zero-shot VLM without CLIP, by convex combination of semantic embeddings
(ConSE; Norouzi et al., 2014).

An ImageNet-1k classifier gives p(y | x); the T = 10 most probable classes, their probabilities
renormalised to sum to one, weight the L2-normalised text embeddings of the class prompts
"a photo of a {name}." (one template, the class names of torchvision's ImageNet weights metadata):

    image(x) = sum_t p_t / (sum_t' p_t') * normalize(text("a photo of a {y_t}."))      [N, d]

so images land in the text encoder's space, and encode_text is the text encoder itself. IMAGE is a
classifier spec that can give logits (effnet-lite0/1/2, timm:..., torchvision:...); TEXT a text
encoder spec (minilm, st:...). The 1000 class embeddings are computed once and cached in
$ZEROSHIFT_HOME/conse/ keyed by the text encoder (spec and weights) and the prompt.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .text_cache import text_embeddings
from .vlm import ImageEncoder, TextEncoder

TOP = 10
PROMPT = "a photo of a {}."
LOGIT_SCHEMES = ("effnet-lite0", "effnet-lite1", "effnet-lite2", "timm", "torchvision")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in label order (torchvision's weights metadata)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def class_embeddings(text: TextEncoder, names: list[str], prompt: str = PROMPT) -> torch.Tensor:
    """normalize(text(prompt.format(name))) for every name: [len(names), text.dim], cached on disk."""
    return F.normalize(text_embeddings(text, [prompt.format(name) for name in names], "conse"), dim=-1)


class ConSEImage(ImageEncoder):
    """images -> classifier softmax -> top-T renormalised -> weighted class embeddings: [N, d]."""

    runtime_parts = ("logits",)  # the classifier runs in onnxruntime; the softmax and mixing stay in torch

    def __init__(self, logits: ImageEncoder, class_emb: torch.Tensor, spec: str, top: int = TOP) -> None:
        super().__init__()
        self.logits, self.top, self.spec = logits, top, spec
        self.register_buffer("class_embeddings", class_emb.float())  # [C, d], unit rows
        self.dim = int(class_emb.shape[1])
        self.image_transform = logits.image_transform

    def weights(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-T class indices [N, T] and their renormalised probabilities [N, T] (rows sum to 1)."""
        probs = self.logits(images).float().softmax(dim=-1)  # [N, C]
        top_p, top_i = probs.topk(self.top, dim=-1)  # [N, T]
        return top_i, top_p / top_p.sum(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index, weight = self.weights(images)
        emb = self.class_embeddings.to(weight.device)[index]  # [N, T, d]
        return (weight.unsqueeze(-1) * emb).sum(dim=1)  # [N, d]

    def torch_module(self) -> nn.Module | None:
        """This ConSE with its classifier in PyTorch again (after runtime.accelerate), for an exporter."""
        inner = self.logits.torch_module()
        if inner is self.logits:
            return self
        return None if inner is None else ConSEImage(inner, self.class_embeddings, self.spec, self.top).eval()
