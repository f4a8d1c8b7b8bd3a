"""The options of the training commands: RunConfig (what every method shares) and one frozen dataclass
per method (TransferConfig, DistillConfig, AlignConfig), with the values their choices allow.

Free of torch: the CLI builds `zeroshift transfer --help` and checks the options from these alone, and
imports a method's module (transfer.py, distill.py, align.py, which re-export their config) only when it
runs. Every check that needs no model or data is made here, in `__post_init__`.
"""
from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..choices import BRIDGE_KINDS, PRECISIONS, RUNTIMES
from ..errors import ZeroshiftError

if TYPE_CHECKING:
    from ..train.loop import TrainConfig

# The logit scale of the zero-shot distributions that transfer's pgkd and distill's kl compare: one
# concept (the teacher's zero-shot softmax over a prompt vocabulary, the target of Zoom-shot's PG-KD,
# Shipard et al. 2024), so one name and one default. CLIP computes that softmax at its learned scale,
# clipped at 100 (Radford et al. 2021); neither paper states a value we could read for its own loss. Measured
# for transfer (docs/transfer.md): at tau 10, 30 and 100 agreement on label sets never trained on moved by
# at most 0.01, and 30 raised it over the 1000 ImageNet prompts; distill's kl (an ablation, not its default
# loss) was 100 before and takes the same 30.
TAU = 30.0
TAU_HELP = ("logit scale tau of the zero-shot distributions softmax(tau cos(., W)) over the prompt vocabulary W, "
            "one value for transfer and distill (CLIP's learned scale is 100; 30 was measured for transfer, "
            "see docs/transfer.md)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The options every training command shares; the CLI shows them after the method's own."""

    OPTIONS_GROUP: ClassVar[str] = "run options"

    out: str = field(metadata={"help": "run folder to write (config.json, model.safetensors, README.md, ...)"})
    epochs: int = field(default=10, metadata={"help": "passes over the training rows"})
    batch_size: int = field(default=128, metadata={"help": "rows per step (over all ranks)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.05, metadata={
        "help": "AdamW weight decay (biases, norm weights and logit scales are not decayed)"})
    warmup: float = field(default=0.05, metadata={"help": "fraction of the steps with a linear warm-up, then cosine"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out data spec: the finished run is evaluated zero-shot on it", "aliases": ("--eval-dataset",)})
    precision: str = field(default="auto", metadata={
        "help": "mixed precision (auto: bf16 on a GPU that has it, else fp32)", "choices": list(PRECISIONS)})
    device: str = field(default="auto", metadata={"help": "training device: auto, cpu, cuda, cuda:N"})
    runtime: str = field(default="auto", metadata={
        "help": "how frozen image towers run (auto: onnxruntime on the CPU where it matches PyTorch)",
        "choices": list(RUNTIMES)})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, shuffling and augmentation"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: each epoch end)"})
    resume: bool = field(default=True, metadata={"help": "continue from OUT.ckpt when a kill left one"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep OUT.ckpt after the run finished"})
    overwrite: bool = field(default=False, metadata={"help": "replace a run already in --out"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars (for logs); the summary is still printed"})

    def __post_init__(self) -> None:
        """Checks every option with `choices` (the method's too; a tuple option value by value), turns a
        lone string given for a tuple option into a tuple, and refuses an empty required one."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            values = getattr(self, f.name)
            if isinstance(values, str) and typing.get_origin(hints[f.name]) is tuple:
                values = (values,)
                object.__setattr__(self, f.name, values)
            if values == () and f.default is MISSING:
                raise ZeroshiftError(f"--{f.name.replace('_', '-')} needs at least one data spec")
            allowed = f.metadata.get("choices")
            for value in values if isinstance(values, tuple) else (values,):
                if allowed and value not in allowed:
                    what = f.metadata.get("noun", f.name.replace("_", " "))
                    raise ZeroshiftError(f"unknown {what} {value!r}; use one of {', '.join(map(str, allowed))}")
        counts = [x for x in (self.epochs, self.batch_size) if x is not None]
        if (counts and min(counts) < 1) or (self.lr is not None and self.lr <= 0) or self.checkpoint_every < 0:
            raise ZeroshiftError("--epochs and --batch-size must be at least 1, --lr above 0 and "
                                 "--checkpoint-every at least 0")
        if (self.weight_decay is not None and self.weight_decay < 0) or not 0 <= (self.warmup or 0) < 1:
            raise ZeroshiftError("--weight-decay must be at least 0 and --warmup in [0, 1)")

    def train_config(self, **options: Any) -> TrainConfig:
        """The loop's options: these run options and gradient clipping at norm 1, overridden by `options`
        (a method's own recipe)."""
        from ..train.loop import TrainConfig

        return TrainConfig(**{"epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                              "warmup": self.warmup, "grad_clip": 1.0, "seed": self.seed,
                              "precision": self.precision, "device": self.device, **options})


METHODS = ("zoomshot", "ttc", "lstsq")
TRANSFER_LOSSES = ("mse", "cycle", "pgkd")
PGKD = ("lm", "htce")
# Factors of --ridge tried on the held-out split: around the default 300 they span 30 .. 3000, the range
# measured by hand (docs/transfer.md), half a decade apart, so five cheap solves of one moments pass.
RIDGE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True, kw_only=True)
class TransferConfig(RunConfig):
    """The options of `zeroshift transfer` (the run options are RunConfig's)."""

    teacher: str = field(metadata={"help": "the VLM whose joint space the bridge maps into, "
                                           "e.g. conse:effnet-lite2+minilm"})
    encoder: str = field(metadata={"help": "the vision encoder to bridge, e.g. effnet-lite0"})
    data: tuple[str, ...] = field(metadata={
        "help": "one or more data specs of unlabelled fit images, fitted together (each cached on its own, held out "
                "from per image); their labels and captions are never read"})
    unpaired_data: str | None = field(default=None, metadata={
        "help": "the teacher's own fit images: unpaired mode, no image is seen by both encoders"})
    method: str = field(default="zoomshot", metadata={"help": "how to fit the bridge", "choices": list(METHODS)})
    bridge: str = field(default="linear", metadata={"help": "bridge kind (zoomshot only: mlp)", "choices": list(BRIDGE_KINDS)})
    hidden: int = field(default=1024, metadata={"help": "hidden width of the mlp bridge"})
    losses: tuple[str, ...] = field(default=(), metadata={
        "help": "zoomshot loss terms (default: mse pgkd paired, cycle pgkd unpaired)", "choices": list(TRANSFER_LOSSES),
        "noun": "loss"})
    mse_weight: float = field(default=1.0, metadata={"help": "weight of the paired MSE term"})
    cycle_weight: float = field(default=1.0, metadata={"help": "weight of the cycle terms (images and text)"})
    pgkd_weight: float = field(default=1.0, metadata={"help": "weight of the prompt-guided distillation term"})
    pgkd: str = field(default="lm", metadata={"help": "pgkd target: lm (KL to the teacher's distribution) or "
                                                      "htce (cross-entropy to its argmax)", "choices": list(PGKD)})
    tau: float = field(default=TAU, metadata={"help": "pgkd: " + TAU_HELP})
    prompts: str | None = field(default=None, metadata={
        "help": "prompt file, one prompt per line (default: the 1000 ImageNet class names in 'a photo of a {c}.')"})
    ridge: float = field(default=300.0, metadata={
        "help": "closed-form ridge penalty, weighing as much as this many fit images (with --holdout, the centre "
                "of --ridge-grid)"})
    ridge_grid: tuple[float, ...] = field(default=RIDGE_GRID, metadata={
        "help": "factors of --ridge the closed form tries, keeping the one the held-out images agree with most "
                "(--ridge-grid 1 fixes --ridge; ignored with --holdout 0)"})
    views: int = field(default=1, metadata={
        "help": "fit on K seeded augmented views of every fit image (view 0 is the image itself; 1: the images, "
                "sharing the plain caches); the encoder's and the teacher's view caches hold the same views"})
    augment: str = field(default="default", metadata={
        "help": "the views' recipe, name=value,...: crop, flip, jitter, bg, size, seed, mix (default: "
                "crop=0.35-1,flip=0.5,jitter=0.4,bg=random,size=256,seed=0, mix=0; mix=P blends a share P of "
                "the views with another image; none: every view plain)"})
    holdout: float = field(default=0.1, metadata={
        "help": "share of the fit images held out (paired only; labels are never read): it chooses the ridge "
                "and the epoch kept by agreement with the teacher on them; 0 turns selection off"})
    warm_start: bool = field(default=True, metadata={"help": "start zoomshot from the closed form (paired only)"})
    data_fraction: float = field(default=1.0, metadata={"help": "use this seeded fraction of the fit images"})
    epochs: int | None = field(default=None, metadata={
        "help": "epochs (default: zoomshot 1, ttc 5; zoomshot --bridge mlp 10 with --holdout, keeping the best)"})
    batch_size: int | None = field(default=None, metadata={"help": "rows per step (default: zoomshot 256, ttc 100)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: zoomshot 1e-3, ttc 0.01)"})
    weight_decay: float | None = field(default=None, metadata={
        "help": "weight decay (default: zoomshot 0, ttc 5e-4 as Text-to-Concept)"})
    warmup: float | None = field(default=None, metadata={"help": "fraction of the steps with a linear warm-up (default 0)"})
    precision: str = field(default="fp32", metadata={
        "help": "mixed precision (a bridge is small: full precision unless asked)", "choices": list(PRECISIONS)})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.data_fraction <= 1:
            raise ZeroshiftError(f"--data-fraction must be in (0, 1]; got {self.data_fraction}")
        if min(self.mse_weight, self.cycle_weight, self.pgkd_weight, self.ridge) < 0 or self.tau <= 0:
            raise ZeroshiftError("loss weights and --ridge must be at least 0, and --tau above 0")
        if self.hidden < 1:
            raise ZeroshiftError("--hidden must be at least 1")
        if self.views < 1:
            raise ZeroshiftError(f"--views must be at least 1; got {self.views}")
        if self.augment != "default" and self.views == 1:
            raise ZeroshiftError("--augment draws views: give --views K (K > 1) with it")
        from ..data.augment import parse_augment  # PIL and numpy only: a bad recipe fails before any work

        parse_augment(self.augment)
        if not 0 <= self.holdout < 1:
            raise ZeroshiftError(f"--holdout is the share of images held out, in [0, 1); got {self.holdout:g}")
        if not self.ridge_grid or min(self.ridge_grid) < 0:
            raise ZeroshiftError("--ridge-grid needs at least one factor, each at least 0")
        if self.method != "zoomshot":
            if self.bridge != "linear" or self.losses:
                raise ZeroshiftError(f"--method {self.method} is a fixed affine recipe: --bridge mlp and "
                                     "--losses apply to zoomshot only")
            if self.unpaired_data is not None:
                raise ZeroshiftError(f"--method {self.method} fits paired features by MSE; --unpaired-data "
                                     "needs --method zoomshot")
        elif self.unpaired_data is not None and "mse" in self.losses:
            raise ZeroshiftError("the mse term needs paired images; leave it out with --unpaired-data")

    @property
    def paired(self) -> bool:
        return self.unpaired_data is None


MAX_VIEWS = 256
DISTILL_LOSSES = ("l2", "cosine", "kl", "contrastive-text", "contrastive-feature")
AUGMENT = ("none", "flip", "light")


@dataclass(frozen=True, kw_only=True)
class DistillConfig(RunConfig):
    """The options of `zeroshift distill` (the run options are RunConfig's)."""

    teacher: str = field(metadata={"help": "the VLM whose image embeddings the student learns, "
                                           "e.g. conse:effnet-lite2+minilm"})
    data: tuple[str, ...] = field(metadata={
        "help": "one or more data specs of training images, e.g. synthetic:classes=fashion-mnist,n=4000 "
                "(labels are never read; captions only by contrastive-text)"})
    student: str = field(default="student-cnn", metadata={
        "help": "student image encoder spec: student-cnn[:s|m|l,...], student-vit[:s|m|l,...], timm:NAME@random, "
                "effnet-lite0 (pretrained init), effnet-lite2:blocks=11,size=64 (its first 11 pretrained blocks at 64 px), ..."})
    loss: str = field(default="l2", metadata={"help": "distillation loss", "choices": list(DISTILL_LOSSES)})
    normalize: bool = field(default=True, metadata={"help": "l2 on unit-normalised embeddings"})
    tau: float = field(default=TAU, metadata={"help": "kl: " + TAU_HELP})
    temperature: float = field(default=0.07, metadata={"help": "temperature of the contrastive losses"})
    prompts: str | None = field(default=None, metadata={
        "help": "kl's prompt file, one prompt per line (default: the 1000 ImageNet names in 'a photo of a {c}.')"})
    labels: str | None = field(default=None, metadata={
        "help": "the labels the student is for ('a,b,c' or a label file): adds --label-weight x KL(p_t || p_s) of "
                "the teacher's zero-shot distributions among them (at --tau) to the loss, so the decisions you will "
                "ask for are taught directly, and keeps the epoch that agrees most among them (no label of an image "
                "is read)"})
    label_weight: float = field(default=1.0, metadata={"help": "weight of the --labels term"})
    templates: str | None = field(default=None, metadata={"help": "prompt template set or file for --labels"})
    views: int = field(default=4, metadata={
        "help": "augmented views per image whose teacher embeddings are cached once (a view cache); the "
                "student learns each view's own target (1: the plain images)"})
    augment: str = field(default="default", metadata={
        "help": "view recipe, e.g. crop=0.35-1,flip=0.5,jitter=0.4,bg=random (default), or none; mix=P blends "
                "a share P of the views with another fit image, the teacher's target cached for the blend"})
    student_augment: str = field(default="none", metadata={
        "help": "extra student-side augmentation after the views: none; flip or light (flip + random crop) "
                "give the student pixels its target was not computed on (inconsistent; for comparison only)",
        "choices": list(AUGMENT)})
    holdout: float = field(default=0.1, metadata={
        "help": "share of the training images (never single views) held out and scored each epoch by top-1 "
                "agreement with the teacher over the prompt vocabulary; the best epoch is kept (0: the last)"})
    mixup: float = field(default=0.0, metadata={
        "help": "mixup alpha: each batch is mixed with itself at a Beta(alpha, alpha) weight and the teacher, run "
                "online on the mixed pixels, gives the target (function matching); a teacher pass per step, so "
                "for GPUs (0: off, cached targets only)"})
    ema: float = field(default=0.0, metadata={"help": "decay of an EMA of the student's weights, scored and kept "
                                                      "(0: off; e.g. 0.999 for long schedules)"})
    eval_rows: int = field(default=2000, metadata={"help": "rows of --eval-data scored each epoch (seeded subset)"})
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..data.augment import parse_augment  # PIL and numpy only: still no torch

        if self.eval_rows < 1 or self.batch_size < 2:
            raise ZeroshiftError("--eval-rows must be at least 1, --batch-size at least 2")
        if self.tau <= 0 or self.temperature <= 0:
            raise ZeroshiftError("--tau and --temperature must be above 0")
        if not 1 <= self.views <= MAX_VIEWS:
            raise ZeroshiftError(f"--views is the number of views per image, from 1 to {MAX_VIEWS}; got {self.views}")
        if not 0 <= self.mixup <= 10:
            raise ZeroshiftError(f"--mixup is a Beta alpha from 0 (off) to 10; got {self.mixup:g}")
        if self.mixup > 0 and self.loss == "contrastive-text":
            raise ZeroshiftError("--mixup mixes two images, whose captions do not mix: use it with l2, cosine, kl "
                                 "or contrastive-feature")
        if self.labels is not None:
            from ..zeroshot.labels import parse_labels  # torch-free

            if len(set(parse_labels(self.labels, files=True))) < 2 or self.label_weight < 0:
                raise ZeroshiftError("--labels needs at least 2 different labels and --label-weight at least 0")
        if not 0 <= self.holdout < 1 or not 0 <= self.ema < 1:
            raise ZeroshiftError(f"--holdout is a share of the images in [0, 1) and --ema a decay in [0, 1); got "
                                 f"{self.holdout:g} and {self.ema:g}")
        parse_augment(self.augment)


ALIGN_LOSSES = ("infonce", "ls", "kd", "ot")
MODES = ("locked", "finetune")
SIMILARITIES = ("backbone", "ema")


@dataclass(frozen=True, kw_only=True)
class AlignConfig(RunConfig):
    """The options of `zeroshift align` (the run options are RunConfig's)."""

    image: str = field(metadata={"help": "pretrained image tower: an image encoder spec or a VLM's image side"})
    text: str = field(metadata={"help": "pretrained text tower: a sentence encoder spec (e.g. minilm) or a VLM's"})
    data: tuple[str, ...] = field(metadata={"help": "one or more data specs of image-caption pairs "
                                                    "(csv:, wds:, tuxpaint, openclipart, ...)", "aliases": ("--pairs",)})
    dim: int = field(default=256, metadata={"help": "size of the joint space"})
    mode: str = field(default="locked", metadata={"help": "locked: heads on cached features; finetune: also the "
                                                          "towers' last blocks", "choices": list(MODES)})
    loss: str = field(default="ot", metadata={"help": "contrastive targets", "choices": list(ALIGN_LOSSES)})
    alpha: float = field(default=0.5, metadata={"help": "weight of the identity in the ot, kd and ls targets"})
    lam: float = field(default=0.15, metadata={"help": "Sinkhorn entropic regularisation"})
    sinkhorn_iters: int = field(default=5, metadata={"help": "Sinkhorn iterations"})
    kd_temperature: float = field(default=0.01, metadata={"help": "temperature of kd's soft targets"})
    ema: float = field(default=0.999, metadata={"help": "decay of the EMA teacher of the heads"})
    similarity: str = field(default="backbone", metadata={
        "help": "where ot/kd take S_vv and S_tt from: frozen backbone features or the EMA heads",
        "choices": list(SIMILARITIES)})
    noise: float = field(default=0.0, metadata={"help": "fraction of captions replaced by random ones (noise studies)"})
    finetune_blocks: int = field(default=1, metadata={"help": "finetune mode: last blocks trained in each tower"})
    batch_size: int = field(default=512, metadata={"help": "pairs per step (over all ranks)"})
    precision: str = field(default="fp32", metadata={"help": "mixed precision", "choices": list(PRECISIONS)})

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.dim, self.sinkhorn_iters) < 1 or self.finetune_blocks < 0:
            raise ZeroshiftError("--dim and --sinkhorn-iters must be at least 1")
        if not (0 <= self.alpha <= 1 and 0 <= self.noise <= 1 and 0 <= self.ema < 1):
            raise ZeroshiftError("--alpha and --noise must be in [0, 1], --ema in [0, 1)")
        if self.lam <= 0 or self.kd_temperature <= 0:
            raise ZeroshiftError("--lam and --kd-temperature must be above 0")
