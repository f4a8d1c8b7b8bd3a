"""Run CLIP_benchmark itself on any zeroshift VLM.

CLIP_benchmark's metric functions take `(model, transform, tokenizer)`: `tokenizer(texts).to(device)`
gives a tensor that `model.encode_text` consumes, and `model.encode_image(images)` takes the
transformed batch. zeroshift VLMs embed strings, so the tokenizer here maps each string to its id in a
table it keeps, and the adapter maps ids back to strings before calling the VLM. Its outputs are
raw; CLIP_benchmark normalises them itself.

    from clip_benchmark.metrics import zeroshot_classification
    model, transform, tokenizer = load("tiny-clip:seed=0")
    zeroshot_classification.evaluate(model, loader, tokenizer, classnames, templates, device="cpu", amp=False)

`register()` adds a `zeroshift` model type to CLIP_benchmark (`--model_type zeroshift`, with the spec
as `--model` and its '@' tag, if any, as `--pretrained`) for scripts that drive its CLI in-process.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models.vlm import VLM, ImageTransform
from ..specs import load as load_model
from ..specs import require


class StringTokenizer:
    """texts -> LongTensor [M] of ids into a growing table of the strings seen."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._ids: dict[str, int] = {}

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = []
        for t in texts:
            if t not in self._ids:
                self._ids[t] = len(self.strings)
                self.strings.append(t)
            ids.append(self._ids[t])
        return torch.tensor(ids, dtype=torch.long)  # [M]

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """The strings behind ids `tokens` [M]."""
        return [self.strings[i] for i in tokens.reshape(-1).tolist()]


class ClipBenchmarkModel(nn.Module):
    """A zeroshift VLM with CLIP_benchmark's interface: encode_image(images), encode_text(token ids)."""

    def __init__(self, vlm: VLM, tokenizer: StringTokenizer) -> None:
        super().__init__()
        self.vlm, self.tokenizer = vlm, tokenizer

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.vlm.encode_image(images).clone()  # [N, d]; clone: a normal tensor, not an inference one

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vlm.encode_text(self.tokenizer.decode(tokens)).clone()  # [M, d]


def adapt(vlm: VLM) -> tuple[ClipBenchmarkModel, ImageTransform, StringTokenizer]:
    """(model, transform, tokenizer) for CLIP_benchmark from a built VLM."""
    tokenizer = StringTokenizer()
    return ClipBenchmarkModel(vlm, tokenizer).eval(), vlm.image_transform, tokenizer


def load(spec: str, device: str = "cpu", runtime: str = "torch") -> tuple[ClipBenchmarkModel, ImageTransform, StringTokenizer]:
    """(model, transform, tokenizer) for CLIP_benchmark from a zeroshift model spec."""
    require(spec, "vlm", "model", command="CLIP_benchmark")
    return adapt(load_model(spec, runtime=runtime, device=device))


def _load_for_cli(model_name: str, pretrained: str, cache_dir: str | None = None, device: str = "cpu"):
    spec = f"{model_name}@{pretrained}" if pretrained else model_name
    return load(spec, device=str(device))


def register(name: str = "zeroshift") -> None:
    """Make `name` a CLIP_benchmark model type that loads zeroshift specs (model [+ '@' + pretrained])."""
    from clip_benchmark import models

    models.TYPE2FUNC[name] = _load_for_cli
    if name not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(name)
