"""`transfer`: give any vision encoder zero-shot ability through a bridge into a VLM's joint space.

Methods (DESIGN 3.1): `zoomshot` (Zoom-shot's loss terms, cycle-consistency and prompt-guided
distillation, plus paired MSE; one epoch of AdamW from the closed-form warm start), `ttc` (Text-to-Concept:
affine, MSE, both sides scaled to variance 4.5, SGD 0.01 / 0.9 / 5e-4, batch 100, 5 epochs) and `lstsq`
(closed-form ridge). Training reads cached features only; no labels and no captions are read.

Loss terms (each weighted, a weight of 0 or leaving the name out disables it), in the aligned spaces,
squared errors averaged over entries as Text-to-Concept's MSE:
- `mse`    paired only: ||h(z_s) - z_c||^2.
- `cycle`  cycle_source ||g(h(z_s)) - z_s||^2, cycle_teacher ||h(g(z_c)) - z_c||^2 and cycle_text
           ||h(g(t)) - t||^2 over a random minibatch of prompt embeddings t each step.
- `pgkd`   p_c = softmax(tau cos(z_c, W)) over the prompt vocabulary's class vectors W is the target
           for p_s = softmax(tau cos(h(z_s), W)): KL(p_c || p_s) ('lm') or cross-entropy to argmax p_c
           ('htce'). Unpaired (no image seen by both encoders), the per-image target exists only for
           the teacher's images, through the cycle: p(h(g(z_c))) against p(z_c) (`pgkd_cycle`); the
           source images get the one target that needs no pairing, the teacher's mean distribution
           over its batch, matched by the mean of p_s over the source batch (`pgkd_marginal`).

Prompt vocabulary: by default the 1000 ImageNet class names x DEFAULT_TEMPLATES, a class vector being
the normalised mean of its templates (CLIP's classifier recipe); a user file holds one full prompt per
line (blank lines and lines starting with '#' skipped), each line its own class. The vocabulary is
encoded once by the teacher's text tower and cached in $ZEROSHIFT_HOME/prompts.

Defaults, chosen by measurement. Teacher conse:effnet-lite2+minilm; sources effnet-lite0 / open-nsfw.
What counts is top-1 agreement with the teacher's zero-shot prediction on label sets never used in
training: Fashion-MNIST's 10 classes (fit on 6,000 seeded train images, scored on the 10,000 test
images; the teacher's most frequent class alone agrees 0.314) and Tux Paint's 16 categories (fit on a
seeded half, 392 images, scored on the other 393; majority 0.453), plus Tux caption R@5 (text->image /
image->text) as a ratio of the teacher's (0.206 / 0.178). One run, 2 CPU cores:

    lite0 / nsfw                         FM-10          Tux-16         Tux R@5 ratio          fit (6k rows)
    ttc                                  0.599 / 0.553  0.433 / 0.542  0.24,0.23 / 0.22,0.11  0.87 / 0.65 s
    lstsq (ridge 300)                    0.629 / 0.599  0.588 / 0.578  0.58,0.46 / 0.64,0.41  0.23 / 0.14 s
    zoomshot (defaults)                  0.626 / 0.594  0.595 / 0.560  0.59,0.46 / 0.66,0.44  0.49 / 0.32 s
    zoomshot, no warm start              0.556 / 0.530  0.458 / 0.504  0.19,0.13 / 0.12,0.04
    zoomshot --bridge mlp                0.624 / 0.593  0.567 / 0.527  0.61,0.44 / 0.65,0.46
    zoomshot cycle+pgkd, tau 100         0.582 / 0.529  0.590 / 0.542  0.64,0.43 / 0.66,0.44
    zoomshot unpaired (disjoint halves)  0.315 / 0.215  0.420 / 0.435  0.05,0.06 / 0.05,0.06

- ridge 300: the closed form is the backbone; a penalty worth 30 / 100 / 300 / 1000 / 3000 images gave
  FM-10 0.609 / 0.620 / 0.629 / 0.633 / 0.631 and Tux-16 0.555 / 0.565 / 0.588 / 0.606 / 0.606 (lite0),
  while Tux image->text R@5 and agreement over the 1000 ImageNet prompts fall from 1000 on.
- warm start: without it one epoch lands far below the closed form (table).
- loss terms: from the warm start, one epoch of AdamW (lr 1e-3, batch 256) moves FM-10 agreement by
  at most 0.01 (Tux-16 within its +-0.025 noise) for mse alone, mse + pgkd at tau 10 / 30 / 100 x 0.1,
  htce, or 5 epochs; pgkd at tau 30 raises agreement over the ImageNet prompt vocabulary (lite0
  0.476 -> 0.493, nsfw 0.430 -> 0.453).
  Each image cycle term costs FM-10 agreement in paired mode (weight 0.1: -0.008 / -0.007; weight 1:
  -0.018 / -0.020), and Zoom-shot's own pair of terms without mse costs 0.04-0.07: so paired defaults
  are mse + pgkd (lm, tau 30), cycle off; unpaired defaults are the paper's cycle + pgkd.
- lr 1e-2 instead of 1e-3 drifts off the closed form (FM-10 0.592, Tux-16 0.463 for lite0).
- mlp: no held-out gain at 6,000 fit images. Trained 20 epochs on mse alone (lite0, ridge 600) it
  reaches FM-10 agreement 0.890 on its fit images against 0.682 for linear, but 0.631 against 0.622 on
  the test images: it overfits; offered, not the default.
- unpaired: agreement at the majority-class rate; nothing ties the two spaces without pairs here (a
  Gromov-Wasserstein matching of the two image sets, tried by hand, was at chance as well).
- vocabulary: 1 template ("a photo of a {c}.") or the 8 of the 'default' set gave the same FM-10
  (0.626 / 0.594) and Tux-16 within 0.01, so the default encodes 1,000 prompts, not 8,000.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..cache import Features, embed
from ..data.base import DataSource, Subset
from ..errors import CacheError, CacheMismatch, DataError, ZeroshiftError
from ..models.bridge import KINDS, Bridge, Moments
from ..models.vlm import VLM
from ..report import card_tail
from ..train.batches import Epoch
from ..train.checkpoint import Checkpoints, run_checkpoints
from ..train.loop import TrainConfig, plot_history, train
from ..version import __version__
from ..zeroshot.prompts import DEFAULT_TEMPLATES, Prompts, encode_prompts, vocabulary
from .publish import publish_run

METHODS = ("zoomshot", "ttc", "lstsq")
LOSSES = ("mse", "cycle", "pgkd")
PGKD = ("lm", "htce")
STATS_ROWS = 4096  # rows per chunk of the statistics pass


@dataclass(frozen=True)
class TransferConfig:
    """Every option of `zeroshift transfer`."""

    teacher: str = field(metadata={"help": "the VLM whose joint space the bridge maps into, "
                                           "e.g. conse:effnet-lite2+minilm"})
    encoder: str = field(metadata={"help": "the vision encoder to bridge, e.g. effnet-lite0"})
    data: str = field(metadata={"help": "unlabelled fit images (data spec); their labels and captions are never read"})
    out: str = field(metadata={"help": "run folder to write (config.json, model.safetensors, README.md, ...)"})
    unpaired_data: str | None = field(default=None, metadata={
        "help": "the teacher's own fit images: unpaired mode, no image is seen by both encoders"})
    method: str = field(default="zoomshot", metadata={"help": "how to fit the bridge", "choices": list(METHODS)})
    bridge: str = field(default="linear", metadata={"help": "bridge kind (zoomshot only: mlp)", "choices": list(KINDS)})
    hidden: int = field(default=1024, metadata={"help": "hidden width of the mlp bridge"})
    losses: tuple[str, ...] = field(default=(), metadata={
        "help": "zoomshot loss terms (default: mse pgkd paired, cycle pgkd unpaired)", "choices": list(LOSSES)})
    mse_weight: float = field(default=1.0, metadata={"help": "weight of the paired MSE term"})
    cycle_weight: float = field(default=1.0, metadata={"help": "weight of the cycle terms (images and text)"})
    pgkd_weight: float = field(default=1.0, metadata={"help": "weight of the prompt-guided distillation term"})
    pgkd: str = field(default="lm", metadata={"help": "pgkd target: lm (KL to the teacher's distribution) or "
                                                      "htce (cross-entropy to its argmax)", "choices": list(PGKD)})
    tau: float = field(default=30.0, metadata={"help": "logit scale of the pgkd distributions"})
    prompts: str | None = field(default=None, metadata={
        "help": "prompt file, one prompt per line (default: the 1000 ImageNet class names in 'a photo of a {c}.')"})
    epochs: int | None = field(default=None, metadata={"help": "epochs (default: zoomshot 1, ttc 5)"})
    batch_size: int | None = field(default=None, metadata={"help": "rows per step (default: zoomshot 256, ttc 100)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: zoomshot 1e-3, ttc 0.01)"})
    ridge: float = field(default=300.0, metadata={
        "help": "closed-form ridge penalty, weighing as much as this many fit images"})
    warm_start: bool = field(default=True, metadata={"help": "start zoomshot from the closed form (paired only)"})
    data_fraction: float = field(default=1.0, metadata={"help": "use this seeded fraction of the fit images"})
    seed: int = field(default=0, metadata={"help": "seed of the data subset, shuffling and initialisation"})
    eval_dataset: str | None = field(default=None, metadata={"help": "evaluate the result zero-shot on this data spec"})
    overwrite: bool = field(default=False, metadata={"help": "replace a run already in --out"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: each epoch end)"})
    resume: bool = field(default=True, metadata={"help": "continue from OUT.ckpt when a kill left one"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep OUT.ckpt after the run finished"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})

    def __post_init__(self) -> None:
        for name, value, allowed in (("method", self.method, METHODS), ("bridge", self.bridge, KINDS),
                                     ("pgkd", self.pgkd, PGKD)):
            if value not in allowed:
                raise ZeroshiftError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")
        unknown = [x for x in self.losses if x not in LOSSES]
        if unknown:
            raise ZeroshiftError(f"unknown loss {unknown[0]!r}; use some of {', '.join(LOSSES)}")
        if not 0 < self.data_fraction <= 1:
            raise ZeroshiftError(f"--data-fraction must be in (0, 1]; got {self.data_fraction}")
        if min(self.mse_weight, self.cycle_weight, self.pgkd_weight, self.ridge) < 0 or self.tau <= 0:
            raise ZeroshiftError("loss weights and --ridge must be at least 0, and --tau above 0")
        counts = [x for x in (self.epochs, self.batch_size, self.hidden) if x is not None]
        if min(counts) < 1 or (self.lr is not None and self.lr <= 0) or self.checkpoint_every < 0:
            raise ZeroshiftError("--epochs, --batch-size and --hidden must be at least 1, --lr above 0 and "
                                 "--checkpoint-every at least 0")
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


def loss_weights(cfg: TransferConfig) -> dict[str, float]:
    """The active loss terms and their weights (method and mode defaults resolved)."""
    if cfg.method != "zoomshot":
        return {"mse": 1.0} if cfg.method == "ttc" else {}
    names = cfg.losses or (("mse", "pgkd") if cfg.paired else ("cycle", "pgkd"))
    weights = {n: getattr(cfg, f"{n}_weight") for n in LOSSES if n in names}
    active = {n: w for n, w in weights.items() if w > 0}
    if not active:
        raise ZeroshiftError("every zoomshot loss term is off (weight 0); keep at least one")
    return active


def train_config(cfg: TransferConfig) -> tuple[TrainConfig, int] | None:
    """The loop's options and the batch size for the method (None for the closed form)."""
    if cfg.method == "lstsq":
        return None
    if cfg.method == "ttc":  # Text-to-Concept's scheduler keeps the lr within 0.3% of 0.01 over 5 epochs
        return TrainConfig(epochs=_given(cfg.epochs, 5), lr=_given(cfg.lr, 0.01), weight_decay=5e-4,
                           optimizer="sgd", momentum=0.9, cosine=False, seed=cfg.seed), _given(cfg.batch_size, 100)
    return TrainConfig(epochs=_given(cfg.epochs, 1), lr=_given(cfg.lr, 1e-3), optimizer="adamw", cosine=True,
                       seed=cfg.seed), _given(cfg.batch_size, 256)


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


# ---------------------------------------------------------------- losses
@dataclass
class Views:
    """One batch in the aligned spaces: source us [B, m], teacher uc [B', d] (B' = B when paired),
    hs = h(us) [B, d], prompt minibatch ut [T, d]; raw teacher features zc [B', d]."""

    us: torch.Tensor
    uc: torch.Tensor
    hs: torch.Tensor
    ut: torch.Tensor
    zc: torch.Tensor


class MSELoss(nn.Module):
    """Paired reconstruction ||h(z_s) - z_c||^2."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, bridge: Bridge, v: Views) -> dict[str, torch.Tensor]:
        return {"mse": self.weight * F.mse_loss(v.hs, v.uc)}


class CycleLoss(nn.Module):
    """g(h(.)) = id on source images, h(g(.)) = id on teacher images and on prompt embeddings."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, bridge: Bridge, v: Views) -> dict[str, torch.Tensor]:
        w = self.weight
        return {"cycle_source": w * F.mse_loss(bridge.g(v.hs), v.us),
                "cycle_teacher": w * F.mse_loss(bridge.h(bridge.g(v.uc)), v.uc),
                "cycle_text": w * F.mse_loss(bridge.h(bridge.g(v.ut)), v.ut)}


class PGKDLoss(nn.Module):
    """Prompt-guided distillation: the teacher's zero-shot distribution over the class vectors W is the
    target for the bridge's (see the module docstring for the unpaired form)."""

    def __init__(self, weight: float, classes: torch.Tensor, tau: float, variant: str, paired: bool) -> None:
        super().__init__()
        self.weight, self.tau, self.variant, self.paired = weight, tau, variant, paired
        self.register_buffer("classes", classes)  # [C, d] unit rows

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.tau * F.normalize(raw, dim=-1) @ self.classes.T  # [B, C]

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.variant == "htce":
            return F.cross_entropy(student, teacher.argmax(dim=1))
        return F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")

    def forward(self, bridge: Bridge, v: Views) -> dict[str, torch.Tensor]:
        target = self.logits(v.zc).detach()  # [B', C]
        student = self.logits(bridge.from_teacher(v.hs))  # [B, C]
        if self.paired:
            return {"pgkd": self.weight * self.distill(student, target)}
        cycled = self.logits(bridge.from_teacher(bridge.h(bridge.g(v.uc))))  # [B', C]
        p_c = dist.global_mean(target.softmax(-1).mean(0))  # [C] the teacher batch's mean distribution
        p_s = dist.global_mean(student.softmax(-1).mean(0))  # [C]
        marginal = (p_c * (p_c.clamp_min(1e-12).log() - p_s.clamp_min(1e-12).log())).sum()
        return {"pgkd_cycle": self.weight * self.distill(cycled, target), "pgkd_marginal": self.weight * marginal}


class BridgeTask(nn.Module):
    """The zoomshot and ttc task for train/loop.py: a bridge, its loss terms and the frozen prompts.
    Each batch names its own prompt minibatch ("text"), drawn from the batch's seeded generator, so
    every rank and a resumed run draw the same one."""

    def __init__(self, bridge: Bridge, losses: list[nn.Module], prompts: Prompts | None, paired: bool) -> None:
        super().__init__()
        self.bridge, self.losses, self.paired = bridge, nn.ModuleList(losses), paired
        text = prompts.embeddings if prompts is not None else torch.zeros(0, bridge.teacher_dim)
        self.register_buffer("text", text.float())  # [P, d] raw teacher text embeddings

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        b = self.bridge
        zs, zc = batch["source"], batch["teacher"]  # [B, m], [B', d] raw
        us = b.to_source(zs)
        views = Views(us=us, uc=b.to_teacher(zc), hs=b.h(us), ut=b.to_teacher(self.text[batch["text"]]), zc=zc)
        terms: dict[str, torch.Tensor] = {}
        for loss in self.losses:
            terms.update(loss(b, views))
        return terms, {}


def make_losses(cfg: TransferConfig, prompts: Prompts | None) -> list[nn.Module]:
    weights = loss_weights(cfg)
    losses: list[nn.Module] = []
    if "mse" in weights:
        losses.append(MSELoss(weights["mse"]))
    if "cycle" in weights:
        losses.append(CycleLoss(weights["cycle"]))
    if "pgkd" in weights:
        losses.append(PGKDLoss(weights["pgkd"], prompts.class_weights(), cfg.tau, cfg.pgkd, cfg.paired))
    return losses


# ---------------------------------------------------------------- fit rows
class FitRows:
    """Which cached rows the fit uses: paired, the source rows valid in both caches (by Features.index);
    unpaired, every valid row of each cache, on its own."""

    def __init__(self, source: Features, teacher: Features, paired: bool) -> None:
        self.source, self.teacher, self.paired = source, teacher, paired
        prints = [getattr(f, "manifest", {}).get("fingerprint") for f in (source, teacher)]
        if paired and None not in prints and prints[0] != prints[1]:
            raise DataError(f"paired fitting needs both encoders' features of the same images, but {source.path} "
                            f"and {teacher.path} come from different data; pass the teacher's as unpaired data")
        if paired:
            _, self.ps, self.pc = np.intersect1d(source.index, teacher.index, return_indices=True)
        else:
            self.ps, self.pc = np.arange(len(source)), np.arange(len(teacher))
        for what, rows in (("source", self.ps), ("teacher", self.pc)):
            if len(rows) < 2:
                pair = " valid in both caches" if paired else ""
                raise DataError(f"the fit data has {len(rows)} {what} image(s){pair}; a bridge needs at least 2")

    def _read(self, feats: Features, positions: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(feats.gather(positions))  # [B, dim]
        if not torch.isfinite(x).all():
            bad = int(positions[int((~torch.isfinite(x).all(dim=1)).nonzero()[0])])
            raise CacheError(f"feature cache {feats.path} holds NaN or inf (source row {int(feats.index[bad])}): "
                             "re-embed it with overwrite")
        return x

    def moments(self, scatter: bool) -> tuple[Moments, Moments, int, int]:
        """One pass over the fit rows: (source moments, teacher moments, their sides). Paired, one
        Moments holds both sides (0 source, 1 teacher) and their cross products. Under torchrun each
        rank reads every world-th chunk and the sums are added up across ranks."""
        if self.paired:
            m = Moments(scatter)
            self._pass(m, (self.source, self.ps), (self.teacher, self.pc))
            return m, m, 0, 1
        out = []
        for feats, rows in ((self.source, self.ps), (self.teacher, self.pc)):
            m = Moments(scatter=False)
            self._pass(m, (feats, rows))
            out.append(m)
        return out[0], out[1], 0, 0

    def _pass(self, m: Moments, *sides: tuple[Features, np.ndarray]) -> None:
        m.start(*(self._read(f, rows[:STATS_ROWS]) for f, rows in sides))  # the same shift on every rank
        for s in range(dist.rank() * STATS_ROWS, len(sides[0][1]), dist.world_size() * STATS_ROWS):
            m.update(*(self._read(f, rows[s:s + STATS_ROWS]) for f, rows in sides))
        m.all_reduce()

    def batches(self, batch_size: int, seed: int, prompts: int = 0) -> Callable[[int], Epoch]:
        """A function of the epoch giving that epoch's shuffled batches {"source": [B, m], "teacher":
        [B, d], "text": [T] rows of a `prompts`-row vocabulary} (for train/loop.py; this rank's share
        under torchrun). Paired, rows are shuffled together; unpaired, each side on its own, the
        smaller one wrapping around."""
        n = max(len(self.ps), len(self.pc))

        def epoch(e: int) -> Epoch:
            other = None if self.paired else np.random.default_rng([seed, e, 1]).permutation(n)  # [n]

            def make(rows: np.ndarray, g: torch.Generator) -> dict[str, torch.Tensor]:
                c = rows if other is None else other[rows]
                return {"source": torch.from_numpy(self.source.gather(self.ps[rows % len(self.ps)])),
                        "teacher": torch.from_numpy(self.teacher.gather(self.pc[c % len(self.pc)])),
                        "text": torch.randint(max(prompts, 1), (min(batch_size, prompts),), generator=g)}

            return Epoch(n, batch_size, seed, e, make)

        return epoch


# ---------------------------------------------------------------- fitting
@dataclass
class Fit:
    bridge: Bridge
    history: list[dict]
    rows: tuple[int, int]  # source and teacher rows used
    seconds: float


def fit(cfg: TransferConfig, source: Features, teacher: Features, prompts: Prompts | None = None,
        run_dir: Path | None = None, progress: bool = True, checkpoints: Checkpoints | None = None) -> Fit:
    """Fit a bridge from cached features (paired rows of one data set, or two unpaired sets) by
    `cfg.method`. `prompts` is needed when a zoomshot cycle or pgkd term is on; with `checkpoints`
    the training steps resume from the last one."""
    t0 = time.perf_counter()
    if cfg.method == "zoomshot" and prompts is None and {"cycle", "pgkd"} & set(loss_weights(cfg)):
        raise ZeroshiftError("the cycle and pgkd terms need the prompt vocabulary's embeddings")
    if prompts is not None and prompts.embeddings.shape[1] != teacher.dim:
        raise CacheMismatch(f"the prompt embeddings are {prompts.embeddings.shape[1]}-d but the teacher "
                            f"features in {teacher.path} are {teacher.dim}-d")
    rows = FitRows(source, teacher, cfg.paired)
    torch.manual_seed(cfg.seed)
    bridge = Bridge(source.dim, teacher.dim, cfg.bridge, cfg.hidden, center=cfg.method != "ttc")
    closed_form = cfg.method == "lstsq" or (cfg.method == "zoomshot" and cfg.paired and cfg.warm_start)
    ms, mc, ks, kc = rows.moments(scatter=closed_form)
    bridge.set_alignment(ms, mc, ks, kc)
    if closed_form:
        bridge.fit_ridge(ms, cfg.ridge)
    history: list[dict] = []
    options = train_config(cfg)
    if options is not None:
        tcfg, batch_size = options
        bridge.g.requires_grad_("cycle" in loss_weights(cfg))  # g is trained by the cycle terms alone
        task = BridgeTask(bridge, make_losses(cfg, prompts), prompts, cfg.paired)
        batches = rows.batches(batch_size, cfg.seed, len(task.text))
        history = train(task, batches, tcfg, run_dir, progress, checkpoints)
    return Fit(bridge.cpu().eval(), history, (len(rows.ps), len(rows.pc)), time.perf_counter() - t0)


# ---------------------------------------------------------------- the command
def fit_source(spec: str, fraction: float, seed: int, what: str) -> DataSource:
    """The data source named by `spec`, reduced to a seeded `fraction` of its rows."""
    from ..specs import dataset

    source = dataset(spec)
    n = len(source)
    if n < 2:
        raise DataError(f"{what} {spec!r} has {n} image(s); a bridge needs at least 2")
    if fraction < 1:
        k = round(fraction * n)
        if k < 2:
            raise DataError(f"--data-fraction {fraction} leaves {k} of the {n} images of {spec!r}; "
                            "at least 2 are needed")
        source = Subset(source, np.sort(np.random.default_rng(seed).permutation(n)[:k]))
    return source


def _data_entry(source: DataSource, rows: int) -> dict:
    return {"spec": source.spec, "fingerprint": source.fingerprint(), "rows": len(source), "rows_used": rows}


def transfer(cfg: TransferConfig, progress: bool = True) -> VLM:
    """Fit a bridge from `cfg.encoder` into `cfg.teacher`'s joint space and write it as a run folder
    (config.json, model.safetensors, README.md, metrics.jsonl, loss.png); returns it loaded as a VLM.

    With `cfg.eval_dataset`, the finished run is evaluated as `zeroshift eval --model run:OUT` would
    (so later evaluations reuse its feature cache); the records go to OUT/results and the results
    table into the model card.
    """
    from ..models.artefact import RunWriter
    from ..specs import dataset, load
    from ..zeroshot.evaluate import tasks_for

    # Everything that can be checked without models is checked before any work.
    started = time.perf_counter()
    source_data = fit_source(cfg.data, cfg.data_fraction, cfg.seed, "--data")
    teacher_data = source_data if cfg.paired else fit_source(
        cfg.unpaired_data, cfg.data_fraction, cfg.seed, "--unpaired-data")
    weights = loss_weights(cfg)
    needs_prompts = cfg.method == "zoomshot" and bool({"cycle", "pgkd"} & set(weights))
    texts, groups = vocabulary(cfg.prompts) if needs_prompts else ([], 0)
    eval_source = dataset(cfg.eval_dataset) if cfg.eval_dataset else None
    if eval_source is not None:
        tasks_for(eval_source)
    out = Path(cfg.out).expanduser().resolve()
    identity = {"kind": "bridge", "teacher": cfg.teacher, "encoder": cfg.encoder, "data": cfg.data,
                "method": cfg.method}
    # under torchrun only rank 0 writes the run; every rank fits and evaluates
    with RunWriter(out, cfg.overwrite, identity, active=dist.rank() == 0) as run:
        encoder, teacher = load(cfg.encoder, runtime=cfg.runtime), load(cfg.teacher, runtime=cfg.runtime)
        t0 = time.perf_counter()
        src = embed(encoder, source_data, runtime=cfg.runtime, progress=progress)
        tch = embed(teacher, teacher_data, runtime=cfg.runtime, progress=progress)
        for name, feats, model in (("encoder", src, encoder), ("teacher", tch, teacher)):
            if feats.dim != model.dim:
                raise CacheMismatch(f"feature cache {feats.path} holds {feats.dim}-d features but the {name} "
                                    f"{model.spec} gives {model.dim}-d: re-embed with overwrite")
        prompts = encode_prompts(teacher, texts, groups, progress) if needs_prompts else None
        embed_seconds = time.perf_counter() - t0
        checkpoints = run_checkpoints(out, asdict(cfg), cfg.checkpoint_every, cfg.resume, dims=[src.dim, tch.dim],
                                      data=[src.manifest["fingerprint"], tch.manifest["fingerprint"]])
        result = fit(cfg, src, tch, prompts, run.path, progress, checkpoints)
        if result.history:
            plot_history(result.history, run.path / "loss.png", title=f"{cfg.method}: {cfg.encoder} -> {cfg.teacher}")
        options = train_config(cfg)
        config = {
            "kind": "bridge", "zeroshift_version": __version__,
            "teacher": cfg.teacher, "encoder": cfg.encoder,
            "dims": {"encoder": src.dim, "teacher": tch.dim}, "bridge": result.bridge.config(),
            "method": cfg.method, "losses": weights,
            "pgkd": cfg.pgkd if "pgkd" in weights else None, "tau": cfg.tau if "pgkd" in weights else None,
            "train": None if options is None else {**asdict(options[0]), "batch_size": options[1]},
            "ridge": cfg.ridge, "paired": cfg.paired, "resumed_from_step": checkpoints.resumed_step,
            "data": _data_entry(source_data, result.rows[0]),
            "unpaired_data": None if cfg.paired else _data_entry(teacher_data, result.rows[1]),
            "prompts": None if not needs_prompts else {
                "file": cfg.prompts, "templates": None if cfg.prompts else list(DEFAULT_TEMPLATES),
                "count": len(texts), "classes": groups,
                "sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest()},
            "seconds": {"embed": round(embed_seconds, 2), "fit": round(result.seconds, 2),
                        "total": round(time.perf_counter() - started, 2)},
            "options": asdict(cfg),
        }
        state = {f"bridge.{k}": v.detach().cpu().contiguous() for k, v in result.bridge.state_dict().items()}
        run.finish(config, state, model_card(config, result.history))
    return publish_run(out, cfg.runtime, checkpoints, cfg.keep_checkpoints, eval_source,
                       lambda records: model_card(config, result.history, records), progress)


# ---------------------------------------------------------------- model card
def model_card(config: dict, history: list[dict], records: list[dict] | None = None) -> str:
    """README.md of a bridge run: what it is, how it was made, its results and how to use it."""
    o = config["options"]
    losses = ", ".join(f"{k} x {w:g}" for k, w in config["losses"].items()) or "none (closed form)"
    data = config["data"]
    lines = [
        f"# zeroshift bridge: {config['encoder']} -> {config['teacher']}", "",
        (f"`{config['encoder']}` made a zero-shot classifier: its image features pass through a learned "
         f"{config['bridge']['kind']} bridge ({config['dims']['encoder']}-d -> {config['dims']['teacher']}-d) "
         f"into the joint space of `{config['teacher']}`, whose text tower embeds the labels. Built with "
         f"zeroshift {config['zeroshift_version']} (`zeroshift transfer`)."), "",
        "| | |", "|---|---|",
        f"| teacher | `{config['teacher']}` |", f"| encoder | `{config['encoder']}` |",
        f"| method | {config['method']}{'' if config['paired'] else ' (unpaired)'} |",
        f"| loss terms | {losses} |",
        f"| fit images | `{data['spec']}`: {data['rows_used']} of {data['rows']} rows, no labels or captions |",
    ]
    if config["unpaired_data"]:
        u = config["unpaired_data"]
        lines.append(f"| teacher's images | `{u['spec']}`: {u['rows_used']} of {u['rows']} rows |")
    if config["prompts"]:
        p = config["prompts"]
        what = p["file"] or "the 1000 ImageNet class names x " + ", ".join(f"'{t}'" for t in DEFAULT_TEMPLATES)
        lines.append(f"| prompt vocabulary | {what}: {p['count']} prompts |")
    if config["train"] and history:
        t = config["train"]
        lines.append(f"| training | {t['epochs']} epoch(s), {t['optimizer']} lr {t['lr']:g}, batch {t['batch_size']}, "
                     f"final loss {history[-1]['loss']:.4g} |")
    lines.append(f"| fit time | {config['seconds']['fit']} s (features: {config['seconds']['embed']} s) |")
    lines += card_tail(o["out"], records, [f"zeroshift eval --model run:{o['out']} --dataset fashion-mnist:test"],
                       "`config.json` (every option), `model.safetensors` (the bridge), `metrics.jsonl` and "
                       "`loss.png` (training curve; none for the closed form).")
    return "\n".join(lines)
