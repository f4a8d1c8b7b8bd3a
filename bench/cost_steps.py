"""What bench/costs.py measures: the harness (seeded inputs, timed calls, zeroshift's training loop fed one
batch) and one function per measured step, each built from zeroshift's own towers, tasks and losses."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from common import CallTimer, timed
from torch import nn

import zeroshift
from zeroshift.compose import build_student
from zeroshift.methods import sinkhorn as sinkhorn_module
from zeroshift.methods.align import AlignConfig, AlignTask, soft_targets
from zeroshift.methods.distill import DistillConfig, DistillTask, L2Loss
from zeroshift.methods.transfer import (
    BridgeTask,
    TransferConfig,
    make_losses,
    train_config,
)
from zeroshift.models.aligned import Heads, trainable_blocks
from zeroshift.models.bridge import Bridge
from zeroshift.models.pixels import pixel_pipeline
from zeroshift.models.student import param_count
from zeroshift.train.loop import TrainConfig, train
from zeroshift.zeroshot.prompts import Prompts, vocabulary

TEACHER = "openclip:ViT-B-32@random"  # CLIP ViT-B/32: Zoom-shot's and the distill paper's teacher
TEACHER_DIM = 512
SOURCES = {"resnet50": ("timm:resnet50@random", 2048), "vit-b16": ("timm:vit_base_patch16_224@random", 768)}
STUDENTS = {"resnet18": "timm:resnet18@random", "student-cnn": "student-cnn"}
TEXT_TOKENS = 32  # caption length in tokens for the RoBERTa tower
PROMPT_CLASSES = 1000  # Zoom-shot's prompt vocabulary: ImageNet's classes


@dataclass
class Bench:
    """What every measurement needs: the options, the device and its autocast dtype; seeded random inputs."""

    cfg: Any  # costs.CostsConfig: steps, warmup, batch sizes and precision
    device: torch.device
    amp: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(self.device, dtype)

    def tokens(self, n: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random token ids [n, TEXT_TOKENS] (no special or padding ids) and an all-ones attention mask."""
        ids = torch.randint(3, vocab, (n, TEXT_TOKENS), generator=torch.Generator().manual_seed(0))
        return ids.to(self.device), torch.ones_like(ids, device=self.device)

    def pixels(self, transform, n: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """A random batch [n, 3, H, W] as zeroshift's pixel cache holds it for `transform` (uint8, or float
        where the transform has no batchable tail), and the function that finishes it on the device."""
        encoder, finish = pixel_pipeline(transform)
        g = torch.Generator().manual_seed(0)
        if encoder.dtype == "uint8":
            x = torch.randint(0, 256, (n, *encoder.shape), generator=g, dtype=torch.uint8)  # [n, 3, H, W]
        else:
            x = torch.randn(n, *encoder.shape, generator=g)  # [n, 3, H, W], already normalised
        return x.to(self.device), finish

    def timed(self, fn: Callable[[], Any]) -> list[float]:
        """Seconds of each of cfg.steps calls of `fn` (synchronised), after cfg.warmup untimed calls."""
        return timed(fn, self.cfg.steps, self.cfg.warmup, self.sync).seconds

    def loop(self, task: nn.Module, batch: dict, options: TrainConfig) -> list[float]:
        """Seconds of each timed step of zeroshift's training loop on `task`, fed the same `batch` each step."""
        clock = Clock(batch, self.cfg.warmup + self.cfg.steps, self.sync)
        options = dataclasses.replace(options, epochs=1, device=str(self.device), precision=self.cfg.precision)
        train(task, lambda epoch: clock, options, progress=False)
        marks = clock.marks[self.cfg.warmup:]
        return [b - a for a, b in itertools.pairwise(marks)]


class Clock:
    """`n` repeats of one batch for train(): notes the (synchronised) time each step starts and the last ends."""

    def __init__(self, batch: dict, n: int, sync: Callable[[], None]) -> None:
        self.batch, self.n, self.sync, self.marks = batch, n, sync, []

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict]:
        self.marks = []
        for _ in range(self.n):
            self.sync()
            self.marks.append(time.perf_counter())
            yield self.batch
        self.sync()
        self.marks.append(time.perf_counter())


def rate(seconds: list[float], batch: int, what: str, **extra: Any) -> dict:
    """A measurement's figures from its per-step seconds at `batch` items per step."""
    items_per_s = batch * len(seconds) / sum(seconds)
    return {"what": what, "batch": batch, "steps": len(seconds), "items_per_s": items_per_s,
            "s_per_1m": 1e6 / items_per_s, "step_ms_median": 1e3 * statistics.median(seconds),
            "step_ms": [round(1e3 * s, 3) for s in seconds], **extra}


# ---------------------------------------------------------------- towers
class SentenceEncoder(nn.Module):
    """RoBERTa-base (random weights) with mean pooling, DeCLUTR-sci-base's architecture: ids [B, L] -> [B, 768]."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        config = RobertaConfig()  # roberta-base: 12 layers, 768 wide, 12 heads, 50265 tokens
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.model = RobertaModel(config, add_pooling_layer=False)
        self.dim, self.vocab = config.hidden_size, config.vocab_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, 768]
        m = mask.unsqueeze(-1).to(h.dtype)  # [B, L, 1]
        return (h * m).sum(1) / m.sum(1).clamp_min(1)  # [B, 768]


def teacher_vlm():
    """CLIP ViT-B/32 through zeroshift's openclip spec (open_clip's root-logger warning about random weights muted)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return zeroshift.load(TEACHER)
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------- encode
def encode_image(spec_or_tower: str | Callable[[], nn.Module], what: str) -> Callable[[Bench], dict]:
    def run(b: Bench) -> dict:
        tower = zeroshift.load(spec_or_tower) if isinstance(spec_or_tower, str) else spec_or_tower()
        tower = tower.to(b.device).eval()
        x, finish = b.pixels(tower.image_transform, b.cfg.encode_batch)

        def step() -> torch.Tensor:  # as embed encodes a batch: finish the pixels, encode_image, to the CPU
            with b.autocast():
                return tower.encode_image(finish(x)).float().cpu()  # [B, dim]

        return rate(b.timed(step), b.cfg.encode_batch, what, unit="images", spec=getattr(tower, "spec", ""),
                    params=param_count(tower), input=list(x.shape[1:]))
    return run


def encode_clip_text(b: Bench) -> dict:
    text = teacher_vlm().text.to(b.device).eval()
    prompts = vocabulary(None)[0]  # 'a photo of a {c}.' for the ImageNet classes
    texts = [prompts[i % len(prompts)] for i in range(b.cfg.encode_batch)]

    def step() -> torch.Tensor:  # the tower's forward: open_clip's tokenizer, then the text transformer
        with torch.inference_mode(), b.autocast():
            return text(texts).float().cpu()  # [B, 512]

    return rate(b.timed(step), b.cfg.encode_batch, "CLIP ViT-B/32 text tower (prompts, tokenising included)",
                unit="sentences", spec=text.spec, params=param_count(text))


def encode_roberta(b: Bench) -> dict:
    model = SentenceEncoder().to(b.device).eval()
    ids, mask = b.tokens(b.cfg.encode_batch, model.vocab)

    def step() -> torch.Tensor:
        with torch.inference_mode(), b.autocast():
            return model(ids, mask).float().cpu()  # [B, 768]

    return rate(b.timed(step), b.cfg.encode_batch, f"RoBERTa-base sentence encoder, {TEXT_TOKENS} tokens",
                unit="sentences", params=param_count(model))


# ---------------------------------------------------------------- transfer
def bridge_step(source: str) -> Callable[[Bench], dict]:
    spec, dim = SOURCES[source]

    def run(b: Bench) -> dict:
        cfg = TransferConfig(teacher=TEACHER, encoder=spec, data="random", out="unused")
        options, _ = train_config(cfg)
        prompts = Prompts(texts=tuple(f"class {k}" for k in range(PROMPT_CLASSES)),
                          embeddings=b.randn(PROMPT_CLASSES, TEACHER_DIM).cpu(), groups=PROMPT_CLASSES)  # [C, 512]
        torch.manual_seed(0)
        bridge = Bridge(dim, TEACHER_DIM, cfg.bridge, cfg.hidden)
        n = b.cfg.transfer_batch
        task = BridgeTask(bridge, make_losses(cfg, prompts), prompts, cfg.paired)
        text = torch.randint(PROMPT_CLASSES, (min(n, PROMPT_CLASSES),), generator=torch.Generator().manual_seed(0))
        batch = {"source": b.randn(n, dim), "teacher": b.randn(n, TEACHER_DIM),  # [B, m], [B, 512]
                 "text": text.to(b.device)}  # [T] the step's prompt minibatch, as FitRows.batches draws it
        terms = sorted(type(loss).__name__ for loss in task.losses)
        return rate(b.loop(task, batch, options), n, f"Zoom-shot bridge {dim} -> {TEACHER_DIM}, {'+'.join(terms)}, "
                    f"{PROMPT_CLASSES} class vectors", unit="rows", params=param_count(task))
    return run


# ---------------------------------------------------------------- distill
class TeacherInDistill(DistillTask):
    """DistillTask whose targets come from the teacher tower inside the step (not from a feature cache)."""

    def __init__(self, student: nn.Module, finish: Callable, loss: nn.Module, teacher: nn.Module,
                 teacher_finish: Callable) -> None:
        super().__init__(student, finish, loss)
        self.frozen = (teacher.requires_grad_(False).eval(), teacher_finish)  # a tuple: not a submodule

    def step(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        teacher, finish = self.frozen
        with torch.no_grad():
            target = teacher(finish(batch["teacher_pixels"])).float()  # [B, 512]
        return super().step({**batch, "target": target})


def distill_step(student_name: str, inline_teacher: bool) -> Callable[[Bench], dict]:
    spec = STUDENTS[student_name]

    def run(b: Bench) -> dict:
        cfg = DistillConfig(teacher=TEACHER, data=("random",), out="unused", student=spec)
        torch.manual_seed(cfg.seed)
        student = build_student(spec, TEACHER_DIM)
        n = b.cfg.distill_batch
        pixels, finish = b.pixels(student.image_transform, n)
        batch = {"pixels": pixels, "target": b.randn(n, TEACHER_DIM)}  # [B, 3, S, S], [B, 512]
        loss = L2Loss(cfg.normalize)
        what = f"{cfg.loss} distill step, student {student.spec} at {pixels.shape[-1]} px"
        if inline_teacher:
            teacher = teacher_vlm().image.to(b.device)
            batch["teacher_pixels"], teacher_finish = b.pixels(teacher.image_transform, n)
            task = TeacherInDistill(student, finish, loss, teacher, teacher_finish)
            what += ", ViT-B/32 teacher forward in the step"
        else:
            task = DistillTask(student, finish, loss)
            what += ", cached teacher targets"
        return rate(b.loop(task, batch, cfg.train_config()), n, what, unit="images", params=param_count(student))
    return run


# ---------------------------------------------------------------- align
def align_config(mode: str) -> AlignConfig:
    return AlignConfig(image=SOURCES["resnet50"][0], text="RoBERTa-base (random weights)", data=("random",),
                       out="unused", mode=mode)


def align_finetune(everything: bool) -> Callable[[Bench], dict]:
    """Every tower parameter trains (OTTER), or the last cfg.finetune_blocks blocks (zeroshift's finetune mode)."""

    def run(b: Bench) -> dict:
        cfg = align_config("finetune")
        blocks = None if everything else cfg.finetune_blocks
        image, text = zeroshift.load(cfg.image), SentenceEncoder()
        for model in (image, text):
            names = None if blocks is None else set(trainable_blocks(model, blocks))
            for name, p in model.named_parameters():
                p.requires_grad_(names is None or name in names)
        n = b.cfg.align_batch
        pixels, finish = b.pixels(image.image_transform, n)
        ids, mask = b.tokens(n, text.vocab)
        batch = {"caption": torch.arange(n, device=b.device), "pixels": pixels, "ids": ids, "mask": mask}

        def image_fn(batch: dict) -> torch.Tensor:
            return image(finish(batch["pixels"])).float()  # [B, 2048]

        def text_fn(batch: dict) -> torch.Tensor:
            return text(batch["ids"], batch["mask"]).float()  # [B, 768]

        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            heads = Heads(image.dim, text.dim, cfg.dim)
        task = AlignTask(cfg, heads, image_fn, text_fn, nn.ModuleList([image, text]))
        trained = sum(p.numel() for p in task.parameters() if p.requires_grad)
        which = "every tower parameter" if blocks is None else f"the towers' last {blocks} block(s)"
        return rate(b.loop(task, batch, cfg.train_config()), n,
                    f"OTTER {cfg.loss} step, ResNet-50 + RoBERTa-base ({TEXT_TOKENS} tokens), {which} trained",
                    unit="pairs", trained_params=trained)
    return run


def align_locked(b: Bench) -> dict:
    cfg = align_config("locked")
    n = b.cfg.align_batch
    image_dim, text_dim = SOURCES["resnet50"][1], 768
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        task = AlignTask(cfg, Heads(image_dim, text_dim, cfg.dim))
    batch = {"caption": torch.arange(n, device=b.device), "image": b.randn(n, image_dim), "text": b.randn(n, text_dim)}
    return rate(b.loop(task, batch, cfg.train_config()), n, f"OTTER {cfg.loss} step, heads only on cached "
                f"{image_dim}-d / {text_dim}-d features", unit="pairs", trained_params=param_count(task.heads))


def align_targets(b: Bench) -> dict:
    """The ot loss's targets alone (align.soft_targets: costs, both Sinkhorn problems in one call, mixing)."""
    cfg = align_config("finetune")
    n = b.cfg.align_batch
    joint = b.amp or torch.float32  # the EMA heads' outputs under autocast; backbone features are float32
    teacher = (b.randn(n, cfg.dim, dtype=joint), b.randn(n, cfg.dim, dtype=joint),
               b.randn(n, SOURCES["resnet50"][1]), b.randn(n, 768))

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        with b.autocast():
            return soft_targets(cfg, n, b.device, teacher)  # [N, N] each

    with CallTimer(sinkhorn_module, "sinkhorn", b.sync) as sink:  # each call's synchronised seconds
        seconds = b.timed(step)
    sinkhorn_s = sink.seconds[-len(seconds):]
    return rate(seconds, n, f"OTTER ot targets over the batch ({cfg.sinkhorn_iters} Sinkhorn iterations, two "
                f"{n} x {n} problems)", unit="pairs", sinkhorn_ms_median=1e3 * statistics.median(sinkhorn_s),
                sinkhorn_share_of_targets=sum(sinkhorn_s) / sum(seconds))
