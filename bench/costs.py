"""Per-item cost of each method's work at the papers' full-scale architectures (random weights), on one device.

Everything runs through zeroshift's own code: towers from `zeroshift.load` specs, the methods' Task classes
and losses, and the shared training loop (`train.loop.train`, with its autocast, gradient clipping, AdamW
and per-step checks); inputs are random tensors of the right shapes. docs/scaling.md projects the papers'
settings onto 1 and 8 GPUs from these figures.

  encode    inference items/s, as `embed` runs a tower (encode_image on preprocessed batches): CLIP
            ViT-B/32 image and text towers (openclip:ViT-B-32@random), ResNet-50 and ViT-B/16 (timm,
            Zoom-shot's sources), and RoBERTa-base with mean pooling (OTTER's DeCLUTR-sci-base; 32 tokens)
  transfer  Zoom-shot bridge rows/s: BridgeTask with the paired defaults (mse + pgkd over 1000 class vectors)
  distill   student images/s: DistillTask, l2, for ResNet-18 (224 px) and student-cnn, on cached teacher
            targets (what zeroshift does) and with the ViT-B/32 teacher run inside the step
  align     OTTER pairs/s: AlignTask, ot loss, ResNet-50 + RoBERTa-base finetuned (every parameter, and
            zeroshift's default last block), and locked (heads on cached features); the OT targets' and
            Sinkhorn's own time
Composites add the seconds per item of their parts (Zoom-shot = encode source + encode teacher + bridge).
Tokenising, decoding and resizing images (CPU work) are not measured; models are built on the CPU first.

    python bench/costs.py --device cuda --precision bf16   # -> bench/results/costs-h100-bf16.{json,md}
    python bench/costs.py --device cpu --quick             # smoke test: tiny batches, 2 steps each
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import logging
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import CallTimer, conditions, timed, write_results
from torch import nn

import zeroshift
from zeroshift.cli.options import add_options, from_args
from zeroshift.errors import ZeroshiftError
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
from zeroshift.compose import build_student
from zeroshift.models.student import param_count
from zeroshift.train.loop import TrainConfig, autocast_dtype, resolve_device, train
from zeroshift.zeroshot.prompts import Prompts, vocabulary

HERE = Path(__file__).parent
TEACHER = "openclip:ViT-B-32@random"  # CLIP ViT-B/32: Zoom-shot's and the distill paper's teacher
TEACHER_DIM = 512
SOURCES = {"resnet50": ("timm:resnet50@random", 2048), "vit-b16": ("timm:vit_base_patch16_224@random", 768)}
STUDENTS = {"resnet18": "timm:resnet18@random", "student-cnn": "student-cnn"}
TEXT_TOKENS = 32  # caption length in tokens for the RoBERTa tower
PROMPT_CLASSES = 1000  # Zoom-shot's prompt vocabulary: ImageNet's classes
QUICK = {"steps": 2, "warmup": 1, "encode_batch": 4, "transfer_batch": 32, "distill_batch": 4, "align_batch": 4}
GROUPS = ("encode", "transfer", "distill", "align")
PRECISION_CHOICES = ("fp32", "bf16", "fp16")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class CostsConfig:
    """Every option of bench/costs.py."""

    device: str = field(default_factory=_default_device, metadata={
        "help": "device to measure on (cuda when present)", "choices": ["cpu", "cuda"]})
    precision: str | None = field(default=None, metadata={
        "help": "autocast precision (default: fp32 on cpu, bf16 on cuda)", "choices": list(PRECISION_CHOICES)})
    steps: int = field(default=20, metadata={"help": "timed steps per measurement"})
    warmup: int = field(default=5, metadata={"help": "untimed steps before them"})
    encode_batch: int = field(default=256, metadata={"help": "images or sentences per encode call"})
    transfer_batch: int = field(default=256, metadata={"help": "rows per bridge step (zoomshot's default)"})
    distill_batch: int = field(default=256, metadata={"help": "images per distill step"})
    align_batch: int = field(default=512, metadata={"help": "pairs per align step (align's default)"})
    quick: bool = field(default=False, metadata={"help": "smoke test: tiny batches, 2 steps each"})
    only: tuple[str, ...] = field(default=(), metadata={
        "help": f"measure only these groups ({', '.join(GROUPS)}) or measurement names"})
    out: str = field(default=str(HERE / "results"), metadata={"help": "folder for costs-<device>-<precision>.json/.md"})

    def __post_init__(self) -> None:
        if self.precision is None:
            object.__setattr__(self, "precision", "bf16" if self.device == "cuda" else "fp32")
        if self.precision not in PRECISION_CHOICES or self.device not in ("cpu", "cuda"):
            raise ZeroshiftError(f"--device is cpu or cuda and --precision one of {', '.join(PRECISION_CHOICES)}")
        if self.quick:
            for key, value in QUICK.items():
                object.__setattr__(self, key, value if key in ("steps", "warmup") else min(getattr(self, key), value))
        if min(self.steps, self.encode_batch, self.transfer_batch) < 1 or self.warmup < 0:
            raise ZeroshiftError("--steps and the batch sizes must be at least 1, --warmup at least 0")
        if min(self.distill_batch, self.align_batch) < 2:
            raise ZeroshiftError("--distill-batch and --align-batch must be at least 2 (the losses compare rows)")
        known = set(GROUPS) | {m.name for m in MEASUREMENTS}
        unknown = [n for n in self.only if n not in known]
        if unknown:
            raise ZeroshiftError(f"unknown --only name {unknown[0]!r}; use {', '.join(GROUPS)} or one of "
                                 f"{', '.join(m.name for m in MEASUREMENTS)}")


@dataclass
class Bench:
    """What every measurement needs: the options, the device and its autocast dtype; seeded random inputs."""

    cfg: CostsConfig
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


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Measurement:
    name: str
    group: str
    run: Callable[[Bench], dict]


MEASUREMENTS = [
    Measurement("encode/clip-image", "encode", encode_image(lambda: teacher_vlm().image,
                                                            "CLIP ViT-B/32 image tower (open_clip, random weights)")),
    Measurement("encode/clip-text", "encode", encode_clip_text),
    Measurement("encode/resnet50", "encode", encode_image(SOURCES["resnet50"][0], "ResNet-50 (timm), pooled 2048-d")),
    Measurement("encode/vit-b16", "encode", encode_image(SOURCES["vit-b16"][0], "ViT-B/16 (timm), 768-d")),
    Measurement("encode/roberta-base", "encode", encode_roberta),
    Measurement("transfer/bridge-vit-b16", "transfer", bridge_step("vit-b16")),
    Measurement("transfer/bridge-resnet50", "transfer", bridge_step("resnet50")),
    Measurement("distill/resnet18", "distill", distill_step("resnet18", inline_teacher=False)),
    Measurement("distill/resnet18+teacher", "distill", distill_step("resnet18", inline_teacher=True)),
    Measurement("distill/student-cnn", "distill", distill_step("student-cnn", inline_teacher=False)),
    Measurement("distill/student-cnn+teacher", "distill", distill_step("student-cnn", inline_teacher=True)),
    Measurement("align/finetune-all", "align", align_finetune(everything=True)),
    Measurement("align/finetune-last1", "align", align_finetune(everything=False)),
    Measurement("align/locked", "align", align_locked),
    Measurement("align/ot-targets", "align", align_targets),
]


def composites(results: dict[str, dict]) -> list[dict]:
    """Per-item seconds of each method's whole work from its measured parts (skipped where a part is missing)."""
    ok = {k: v for k, v in results.items() if "items_per_s" in v}
    per = {k: 1.0 / v["items_per_s"] for k, v in ok.items()}  # seconds per item
    specs = [  # (name, what, {part: measurement}, the measurement timing the whole in one step or None)
        (f"zoomshot/{s}", f"Zoom-shot, per fit image and epoch: {s} + CLIP image encode, bridge step",
         {"source encode": f"encode/{s}", "teacher encode": "encode/clip-image", "bridge step": f"transfer/bridge-{s}"},
         None)
        for s in SOURCES
    ] + [
        (f"distill/{s} (epoch with teacher)", f"CLIP image forward + {s} step, per image",
         {"teacher forward": "encode/clip-image", "student step": f"distill/{s}"}, f"distill/{s}+teacher")
        for s in STUDENTS
    ] + [
        ("align/locked (epoch with towers)", "OTTER locked, per pair: both towers' features + heads step",
         {"image encode": "encode/resnet50", "text encode": "encode/roberta-base", "heads step": "align/locked"}, None),
    ]
    out = []
    for name, what, parts, whole in specs:
        if all(p in per for p in parts.values()):
            out.append(_composite(name, what, {k: per[p] for k, p in parts.items()},
                                  measured=ok.get(whole, {}).get("items_per_s")))
    if "align/ot-targets" in ok:
        t = ok["align/ot-targets"]
        targets, sinkhorn = 1.0 / t["items_per_s"], 1e-3 * t["sinkhorn_ms_median"] / t["batch"]
        for step in ("align/finetune-all", "align/finetune-last1", "align/locked"):
            if step in per and ok[step]["batch"] == t["batch"]:
                rest = max(per[step] - targets, 0.0)
                out.append(_composite(f"{step} (split)", f"{step}'s step: Sinkhorn, rest of the ot targets, the rest",
                                      {"sinkhorn": sinkhorn, "ot targets w/o sinkhorn": max(targets - sinkhorn, 0.0),
                                       "rest of step": rest}))
    return out


def _composite(name: str, what: str, parts: dict[str, float], measured: float | None = None) -> dict:
    total = sum(parts.values())
    row = {"name": name, "what": what, "items_per_s": 1.0 / total, "s_per_1m": 1e6 * total,
           "parts_s_per_1m": {k: 1e6 * v for k, v in parts.items()},
           "fractions": {k: v / total for k, v in parts.items()}}
    if measured is not None:
        row["measured_items_per_s"] = measured
    return row


# ---------------------------------------------------------------- running and writing
def device_tag(device: torch.device) -> str:
    """'cpu', or the GPU family from its name ('NVIDIA H100 80GB HBM3' -> 'h100')."""
    if device.type != "cuda":
        return "cpu"
    words = re.split(r"[^a-z0-9]+", torch.cuda.get_device_name(device).lower())
    family = next((w for w in words if re.fullmatch(r"[a-z]+\d+[a-z]*", w) and w != "nvidia"), None)
    return family or "-".join(w for w in words if w and w != "nvidia") or "cuda"


def measure(m: Measurement, b: Bench) -> dict:
    """One measurement, with the peak GPU memory it took; a failure (out of memory, ...) is recorded."""
    if b.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(b.device)
    t0 = time.perf_counter()
    try:
        row = m.run(b)
    except Exception as e:  # noqa: BLE001 - any failure is a result; the other measurements go on
        row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    row = {"name": m.name, "group": m.group, **row, "wall_s": round(time.perf_counter() - t0, 2)}
    if b.device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(b.device) / 2**30
    gc.collect()
    if b.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['name']:30s} FAILED ({row['wall_s']:.0f} s): {row['error']}"
    mem = f"  peak {row['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in row else ""
    return (f"{row['name']:30s} batch {row['batch']:4d}  {row['items_per_s']:10.1f} {row['unit']}/s  "
            f"{row['s_per_1m']:10.1f} s/1M  step {row['step_ms_median']:8.2f} ms{mem}  ({row['wall_s']:.0f} s)")


def environment(b: Bench) -> dict:
    import timm
    import transformers

    try:
        import open_clip

        open_clip_version = open_clip.__version__
    except ImportError:
        open_clip_version = None
    started = conditions()  # the load average at the end is the writer's
    return {
        "device": torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else platform.processor() or "cpu",
        "device_tag": device_tag(b.device), "machine": started["machine"], "precision": b.cfg.precision,
        "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
        "transformers": transformers.__version__, "open_clip": open_clip_version, "zeroshift": zeroshift.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "date": started["date"], "options": dataclasses.asdict(b.cfg),
    }


def markdown(env: dict, rows: list[dict], combined: list[dict]) -> str:
    c = env["options"]
    lines = [f"# zeroshift per-item costs: {env['device']}, {env['precision']}", "",
             (f"{env['machine']}; timm {env['timm']}, transformers {env['transformers']}, open_clip "
              f"{env['open_clip']}; {c['warmup']} warm-up + {c['steps']} timed steps each; {env['date']}. Random "
              "weights, random inputs; data loading and tokenising not included (except the CLIP text row)."), "",
             "| what | batch | items/s | s per 1M items | peak memory |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        mem = f"{r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else "-"
        if "error" in r:
            lines.append(f"| `{r['name']}` | | failed: {r['error'][:120]} | | {mem} |")
        else:
            lines.append(f"| `{r['name']}`: {r['what']} | {r['batch']} | {r['items_per_s']:,.1f} {r['unit']}/s | "
                         f"{r['s_per_1m']:,.1f} | {mem} |")
    if combined:
        lines += ["", "Composites (seconds per item of the parts added; fractions of the total):", "",
                  "| composite | items/s | s per 1M items | parts |", "|---|---:|---:|---|"]
        for r in combined:
            parts = ", ".join(f"{k} {100 * f:.1f}%" for k, f in r["fractions"].items())
            check = f" (measured in one step: {r['measured_items_per_s']:,.1f}/s)" if "measured_items_per_s" in r else ""
            lines.append(f"| `{r['name']}`: {r['what']} | {r['items_per_s']:,.1f}{check} | {r['s_per_1m']:,.1f} | {parts} |")
    return "\n".join(lines) + "\n"


def run(cfg: CostsConfig) -> Path:
    """Measure, print a line per measurement, write OUT/costs-<device>-<precision>.json and .md; returns the json."""
    device = resolve_device(cfg.device)
    b = Bench(cfg, device, autocast_dtype(cfg.precision, device))
    env = environment(b)
    print(f"{env['device']} ({env['device_tag']}), {cfg.precision}, torch {env['torch']}; batches encode "
          f"{cfg.encode_batch}, transfer {cfg.transfer_batch}, distill {cfg.distill_batch}, align {cfg.align_batch}; "
          f"{cfg.warmup} + {cfg.steps} steps", flush=True)
    chosen = [m for m in MEASUREMENTS if not cfg.only or m.name in cfg.only or m.group in cfg.only]
    rows = []
    for m in chosen:
        rows.append(measure(m, b))
        print(_line(rows[-1]), flush=True)
    combined = composites({r["name"]: r for r in rows})
    for r in combined:
        parts = ", ".join(f"{k} {100 * f:.1f}%" for k, f in r["fractions"].items())
        print(f"{r['name']:40s} {r['items_per_s']:10.1f}/s  {r['s_per_1m']:10.1f} s/1M  ({parts})", flush=True)
    name = f"costs-{env['device_tag']}-{cfg.precision}"
    path = write_results(cfg.out, name, markdown(env, rows, combined), {**env, "measurements": rows,
                                                                        "composites": combined})
    print(f"wrote {path.with_suffix('')}.json and .md", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(p, CostsConfig)
    try:
        run(from_args(CostsConfig, p.parse_args(argv)))
    except ZeroshiftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
