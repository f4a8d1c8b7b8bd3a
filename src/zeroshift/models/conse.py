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

import hashlib

import torch
import torch.nn.functional as F

from .. import paths
from ..errors import SpecError
from ..io import atomic_path
from .runtime import weights_digest
from .vlm import ImageEncoder, TextEncoder, TowersVLM

TOP = 10
PROMPT = "a photo of a {}."
LOGIT_SCHEMES = ("effnet-lite0", "effnet-lite1", "effnet-lite2", "timm", "torchvision")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in label order (torchvision's weights metadata)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def class_embeddings(text: TextEncoder, names: list[str], prompt: str = PROMPT) -> torch.Tensor:
    """normalize(text(prompt.format(name))) for every name: [len(names), text.dim], cached on disk."""
    from safetensors.torch import load_file, save_file

    key = "\n".join([text.spec, weights_digest(text), prompt, *names])
    slug = paths.slug(text.spec)
    file = paths.home() / "conse" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if file.is_file():
        return load_file(str(file))["class_embeddings"]
    emb = F.normalize(text.encode_text([prompt.format(name) for name in names]), dim=-1)  # [C, d]
    with atomic_path(file) as tmp:
        save_file({"class_embeddings": emb.cpu().contiguous()}, str(tmp), metadata={"text": text.spec, "prompt": prompt})
    return emb


class ConSEImage(ImageEncoder):
    """images -> classifier softmax -> top-T renormalised -> weighted class embeddings: [N, d]."""

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

    def accelerated(self, runtime: str = "auto") -> "ConSEImage":
        """The same ConSE with its classifier run by `runtime` (the softmax and mixing stay in torch)."""
        fast = self.logits.accelerated(runtime)
        if fast is self.logits:
            return self
        return ConSEImage(fast, self.class_embeddings, self.spec, self.top).eval()


def create(arg: str) -> TowersVLM:
    """Build a ConSE VLM from `IMAGE+TEXT`, e.g. conse:effnet-lite2+minilm."""
    from ..specs import MODEL_SCHEMES, build, parse

    image_spec, sep, text_spec = (part.strip() for part in arg.rpartition("+"))
    if not sep or not image_spec or not text_spec:
        raise SpecError(f"conse: needs IMAGE+TEXT, e.g. conse:effnet-lite2+minilm; got {arg!r}")
    scheme, _ = parse(image_spec, MODEL_SCHEMES)
    if scheme.name not in LOGIT_SCHEMES:
        raise SpecError(f"conse: the image part must be an ImageNet classifier ({', '.join(LOGIT_SCHEMES)}); "
                        f"got {image_spec!r}")
    logits = build(image_spec, MODEL_SCHEMES, output="logits")
    text = build(text_spec, MODEL_SCHEMES)
    names = imagenet_classes()
    if logits.dim != len(names):
        raise SpecError(f"conse: {image_spec} gives {logits.dim} classes, not the {len(names)} of ImageNet-1k")
    if not isinstance(text, TextEncoder):
        raise SpecError(f"conse: the text part must be a text encoder (minilm, st:...); got {text_spec!r}")
    spec = f"conse:{image_spec}+{text_spec}"
    image = ConSEImage(logits, class_embeddings(text.eval(), names), spec + "/image")
    return TowersVLM(image, text, spec=spec).eval()
