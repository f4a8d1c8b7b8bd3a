"""Plain helpers the test modules share: tiny images and folders, tiny models (a teacher that is a known
linear image of a source, and their caches), ONNX files, free ports and torchrun subprocesses. Fixtures
(anything that needs monkeypatch or tmp_path) live in conftest.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from zeroshift.data.memory import ArraySource
from zeroshift.models.tiny import TinyTextEncoder, create
from zeroshift.models.transforms import resize_crop
from zeroshift.models.vlm import ImageEncoder, ModuleEncoder, TowersVLM

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 220)}
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------- errors
def one_line(error: pytest.ExceptionInfo) -> str:
    """The raised error's message, asserted non-empty and on one line."""
    message = str(error.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------- images and folders
def colour_pixels(n: int, side: int, noise: float, seed: int | np.random.Generator = 0) -> np.ndarray:
    """n noisy one-colour RGB images [n, side, side, 3] uint8; `seed` may be a Generator the caller goes on using."""
    rng = np.random.default_rng(seed)  # a Generator is returned as it is
    base = rng.integers(0, 256, (n, 1, 1, 3))  # one colour per image, plus noise
    return np.clip(base + rng.normal(0, noise, (n, side, side, 3)), 0, 255).astype(np.uint8)


def colour_folder(root: Path, n: int, side: int, noise: float = 30.0, seed: int = 0,
                  colours: Mapping[str, tuple[int, int, int]] = COLOURS, captions: Sequence[str] = (),
                  extra: Sequence[bytes] = ()) -> Path:
    """`root/<colour>/<i>.png`: n noisy side x side images per colour class. With `captions` (adjectives), also
    `root/pairs.csv` (path,caption: 'a <adjective i> <colour> thing'), `extra` raw CSV lines appended."""
    rng = np.random.default_rng(seed)
    lines = [b"path,caption"]
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(np.array(rgb) + rng.normal(0, noise, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
            if captions:
                lines.append(f"{name}/{i}.png,a {captions[i % len(captions)]} {name} thing".encode())
    if captions:
        (root / "pairs.csv").write_bytes(b"\n".join([*lines, *extra]) + b"\n")
    return root


def grey_source(n: int, spec: str, n_labels: int, classes: Sequence[str] | None = None) -> ArraySource:
    """n random 28 x 28 grey images labelled 0..n_labels-1 (seed 0), as the torchrun and resume scripts build them."""
    rng = np.random.default_rng(0)
    return ArraySource(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), spec, labels=rng.integers(0, n_labels, n),
                       classes=classes)


# ---------------------------------------------------------------- tiny models
def tiny_vlm() -> TowersVLM:
    """tiny-clip seed 0 without its image-head bias: random tiny-clip maps every image near one direction
    (the bias dominates), so predictions would all be one class; without it they spread over classes."""
    vlm = create("seed=0")
    with torch.no_grad():
        vlm.image.net[-1].bias.zero_()
    vlm.spec = "tiny-clip:seed=0,dim=32,size=32+nobias"
    return vlm


class TinyCNN(ImageEncoder):
    """[N, 3, 32, 32] -> [N, 6], or NHWC in and [N, 6, 1, 1] out as another runtime's graph might be.
    Its last layer is called `head`, as the exported classifier's is, so merged names would clash."""

    def __init__(self, nhwc: bool = False, seed: int = 0, spec: str = "test:tiny-cnn") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.nhwc, self.spec, self.dim = nhwc, spec, 6
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 6)
        self.image_transform = resize_crop(32, norm="inception", crop_pct=1.0)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) if self.nhwc else images  # [N, 3, H, W]
        out = self.head(self.net(x))  # [N, 6]
        return out[:, :, None, None] if self.nhwc else out


class ExportDiffers(TinyCNN):
    """Computes something else while being exported, so a check against PyTorch must refuse the file."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = super().forward(images)
        return out.flip(-1) if torch.onnx.is_in_onnx_export() else out


def export_onnx(model: nn.Module, example: torch.Tensor, file: Path, outputs: Sequence[str] = ("features",),
                **kwargs) -> Path:
    """`model` exported by the TorchScript exporter with input 'pixels' and `outputs`, the batch axis dynamic."""
    axes = {name: {0: "n"} for name in ("pixels", *outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), str(file), dynamo=False, input_names=["pixels"],
                          output_names=list(outputs), dynamic_axes=axes, **kwargs)
    return file


def save_tiny_st(root: Path, tokens: Sequence[str], max_seq_length: int) -> Path:
    """A tiny random BERT SentenceTransformer (mean pooling) with vocabulary `tokens`, saved to root/model."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens])}
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "bert")
    BertTokenizer(vocab=vocab).save_pretrained(root / "bert")
    transformer = models.Transformer(str(root / "bert"), max_seq_length=max_seq_length)
    width = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = models.Pooling(width(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(root / "model"))
    return root / "model"


# ---------------------------------------------------------------- a teacher that is a known linear image of a source
LINEAR_WORDS = ("cat", "dog", "car", "tree", "house", "boat", "bird", "shoe", "cup", "lamp", "fish", "road")


class LinearMap(nn.Module):
    """x.flatten(1) @ W.T + b with a seeded W [n_out, n_in] (scaled by 1 / sqrt(n_in)) and b = bias * N(0, 1)."""

    def __init__(self, n_in: int, n_out: int, seed: int, bias: float) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(n_out, n_in, generator=g) / n_in ** 0.5)
        self.register_buffer("b", bias * torch.randn(n_out, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def linear_images(n: int, seed: int = 0) -> np.ndarray:
    """The linear pair's data: n noisy one-colour 16 x 16 images [n, 16, 16, 3] uint8."""
    return colour_pixels(n, 16, 40, seed)


def linear_pair() -> tuple[ModuleEncoder, TowersVLM]:
    """(source encoder, teacher VLM) with teacher image features = A source features + c exactly
    (16-d source, 32-d teacher, both on 8 x 8 pixels)."""
    transform = T.Compose([T.Resize(8), T.PILToTensor(), T.ToDtype(torch.float32, scale=True),
                           T.Normalize([0.5] * 3, [0.5] * 3)])
    pixels = LinearMap(3 * 8 * 8, 16, seed=1, bias=0.0)
    source = ModuleEncoder(pixels, 16, transform, "test:source")
    image = ModuleEncoder(nn.Sequential(pixels, LinearMap(16, 32, seed=2, bias=0.1)), 32, transform,
                          "test:teacher/image")
    torch.manual_seed(3)
    teacher = TowersVLM(image, TinyTextEncoder(32, "test:teacher/text"), spec="test:teacher")
    return source, teacher.eval()


def linear_case(n: int = 240) -> tuple:
    """(source features, teacher features, prompts, weights) of the linear pair on linear_images(n), cached
    under the current $ZEROSHIFT_HOME: prompts 'a photo of a {w}.' over LINEAR_WORDS (one group each) and
    zero-shot weights [8, 32] over the first 8 words."""
    from zeroshift.cache import embed
    from zeroshift.zeroshot.classifier import zeroshot_weights
    from zeroshift.zeroshot.prompts import encode_prompts

    source, teacher = linear_pair()
    data = ArraySource(linear_images(n), "test:images")
    src, tch = embed(source, data, progress=False), embed(teacher, data, progress=False)
    words = list(LINEAR_WORDS)
    prompts = encode_prompts(teacher, [f"a photo of a {w}." for w in words], len(words), progress=False)
    weights = zeroshot_weights(teacher, words[:8], ["a photo of a {c}."])
    return src, tch, prompts, weights


# ---------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without torchrun's variables, plus `extra`: what a launched process starts from."""
    return {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}, **extra}


def torchrun(script: Path, *args: str | Path, nproc: int = 2, timeout: float = 180,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run` of `script ARGS` on `nproc` local processes and a free port, in
    clean_env() plus `env`; output captured as text."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           str(script), *map(str, args)]
    return subprocess.run(cmd, env=clean_env(**(env or {})), capture_output=True, text=True, timeout=timeout,
                          check=False)
