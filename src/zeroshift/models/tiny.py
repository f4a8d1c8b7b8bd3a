"""tiny-clip: a small random CLIP-like VLM, deterministic for a seed, for tests and smoke runs.

Spec: `tiny-clip:seed=0,dim=32,size=32`. The image tower is a two-layer CNN, the text tower a
bag of hashed character trigrams; both are randomly initialised from the seed.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import nn
from torchvision.transforms import v2 as T

from ..errors import SpecError
from .vlm import ImageEncoder, TextEncoder, TextSide, TowersVLM

_BUCKETS = 4096


_RANGES = {"dim": (1, 4096), "size": (4, 1024)}  # a size=20000 input alone would take 4.8 GB a batch


def _options(arg: str) -> dict[str, int]:
    opts = {"seed": 0, "dim": 32, "size": 32}
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in opts or not value.lstrip("-").isdigit():
            raise SpecError(f"tiny-clip options are seed=, dim=, size= (integers); got {item!r}")
        low, high = _RANGES.get(key, (-(2**63), 2**63 - 1))
        if not low <= int(value) <= high:
            raise SpecError(f"tiny-clip {key} must be from {low} to {high}; got {item!r}")
        opts[key] = int(value)
    return opts


class TinyImageEncoder(ImageEncoder):
    """[N, 3, size, size] -> [N, dim] through two strided convolutions and mean pooling."""

    def __init__(self, dim: int, size: int, spec: str) -> None:
        super().__init__()
        self.spec, self.dim = spec, dim
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, dim),
        )
        self.image_transform = T.Compose([
            T.Resize(size), T.CenterCrop(size), T.PILToTensor(), T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class TinyTextEncoder(TextEncoder):
    """Hashed character trigrams -> EmbeddingBag -> linear, [M, dim]."""

    def __init__(self, dim: int, spec: str) -> None:
        super().__init__()
        self.spec, self.dim = spec, dim
        self.bag = nn.EmbeddingBag(_BUCKETS, 64, mode="mean")
        self.proj = nn.Linear(64, dim)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = [], []
        for text in texts:
            padded = f"  {text.lower()}  "
            offsets.append(len(ids))
            ids.extend(zlib.crc32(padded[i:i + 3].encode()) % _BUCKETS for i in range(len(padded) - 2))
        device = self.proj.weight.device
        bag = self.bag(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))  # [M, 64]
        return self.proj(bag)


def create(arg: str = "") -> TowersVLM:
    """Build tiny-clip from its option string."""
    opts = _options(arg)
    spec = "tiny-clip:" + ",".join(f"{k}={v}" for k, v in opts.items())
    with torch.random.fork_rng():
        torch.manual_seed(opts["seed"])
        image = TinyImageEncoder(opts["dim"], opts["size"], spec + "/image")
        text = TinyTextEncoder(opts["dim"], spec + "/text")
    return TowersVLM(image, text, spec=spec).eval()


def create_text(arg: str = "") -> TextSide:
    """tiny-clip's text side alone: the seeded image tower (a few thousand weights) is built first so that
    the text tower's weights are those of `create`, then dropped."""
    return create(arg).text_side().eval()
