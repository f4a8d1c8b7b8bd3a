"""`distill`: a small student image encoder learns a VLM teacher's image embeddings (DESIGN 3.2).

Popp, Metzen, Hein (2024), "Zero-shot distillation for image encoders: how to make effective use of
synthetic data": the student plus a linear head regresses the teacher's image embedding of the same
image; with the teacher's text tower beside it, it classifies zero-shot. Trained on synthetic images,
contrastive objectives latch onto spurious features, while a plain L2 loss transfers to real images.

Losses (one per run, `--loss`), s the student's and t the teacher's embedding of a batch image:
- `l2` (default): ||s - t||^2, on unit-normalised embeddings unless --no-normalize.
- `cosine`: 1 - cos(s, t).
- `kl`: KL(p_t || p_s), p = softmax(tau cos(., W)) over a prompt vocabulary's class vectors W.
- `contrastive-text`: symmetric InfoNCE between s and the teacher's text embedding of the image's
  caption (or 'a photo of a {class}.'), temperature `temperature`.
- `contrastive-feature`: symmetric InfoNCE between s and t.

Data: the teacher's image embeddings and the student's decoded input pixels are both feature caches
(models/pixels.py), so every image is decoded once and a second run starts training at once. Batches
depend on (seed, epoch, batch) only, which makes a resumed run equal an uninterrupted one.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from ..cache import embed
from ..data.augment import parse_augment
from ..data.base import DataSource
from ..models.cost import cost_rows, image_cost
from ..models.pixels import pixel_pipeline
from ..models.vlm import VLM
from ..report import card_tail
from ..train import plot_eval, plot_history, train
from ..train.fast import preferred_format
from ..zeroshot.prompts import Prompts, encode_prompts, vocabulary
from .common import Run
from .distill_rows import PIXEL_SHARD_ROWS, Prepared, Rows, augment_batch, build_rows, mix  # noqa: F401  (re-exported)
from .distill_rows import split_sources
from .holdout import Agreement
from .config import AUGMENT, DistillConfig  # noqa: F401  (DistillConfig, AUGMENT: re-exported)
from .config import DISTILL_LOSSES as LOSSES  # noqa: F401  (re-exported)
from .losses import ContrastiveFeatureLoss, ContrastiveTextLoss, CosineLoss, KLLoss, L2Loss, Terms


class DistillTask(nn.Module):
    """One step: finish the cached pixels (scale, normalise), run the student, score it by the loss. With
    `online` (mixup), the target is the frozen teacher's embedding of the batch's mixed teacher pixels,
    computed in the step; the teacher is kept out of the module tree, so nothing of it is trained."""

    def __init__(self, student: nn.Module, finish: Callable[[torch.Tensor], torch.Tensor], loss: nn.Module,
                 online: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.student, self.loss = student, loss
        self.finish = finish
        self._online = (online,)  # a tuple: not registered as a submodule

    def step(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if "teacher_pixels" in batch:
            with torch.no_grad():
                batch = {**batch, "target": self._online[0](batch["teacher_pixels"]).float()}  # [B, d]
        s = self.student(self.finish(batch["pixels"])).float()  # [B, d]
        return self.loss(s, batch), {}


def online_teacher(teacher: VLM, finish: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The teacher's image embedding of cached teacher pixels [B, 3, H, W] on whatever device the batch is,
    the teacher moved there on first use (a PyTorch teacher; an ONNX one runs on the CPU)."""
    image = getattr(teacher, "image", teacher)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        if isinstance(image, nn.Module) and not getattr(image, "runs_onnx", False):
            image.to(pixels.device)
            return teacher.encode_image(finish(pixels))  # [B, d]
        return teacher.encode_image(finish(pixels.cpu())).to(pixels.device)  # [B, d]

    return encode


# ---------------------------------------------------------------- held-out scoring
def embed_images(student: nn.Module, finish: Callable, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The student's embeddings of cached pixels [n, 3, H, W] -> [n, d] (float, on the CPU)."""
    device = next(student.parameters()).device
    with torch.inference_mode():
        return torch.cat([student(finish(images[i:i + batch_size].to(device))).float().cpu()
                          for i in range(0, len(images), batch_size)])


class HeldOut:
    """A labelled real set (--eval-data) scored each epoch: student zero-shot acc1, top-1 agreement with the
    teacher's zero-shot prediction, and mean cosine between student and teacher embeddings. Reported only:
    nothing is chosen on it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
                 finish: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.images, self.labels, self.finish = images, labels, finish  # [n, ...], [n]
        self.agreement = Agreement(teacher, weights)  # over the data's own classes

    def __call__(self, student: nn.Module, batch_size: int = 256) -> dict[str, float]:
        emb = embed_images(student, self.finish, self.images, batch_size)  # [n, d]
        return {"acc1": (self.agreement.top1(emb) == self.labels).float().mean().item(), **self.agreement(emb)}


def held_out(teacher: VLM, pixel_encoder, finish, source: DataSource, rows: int, seed: int, runtime: str,
             progress: bool) -> HeldOut:
    from ..data.templates import get_templates
    from ..zeroshot.classifier import check_classnames, zeroshot_weights

    tch = embed(teacher, source, runtime=runtime, progress=progress, role="teacher")
    pix = embed(pixel_encoder, source, runtime="torch", dtype=pixel_encoder.dtype, shard_rows=PIXEL_SHARD_ROWS,
                progress=progress, role="student pixels")
    common = np.intersect1d(tch.index, pix.index)
    labels = np.asarray(source.labels)[common]
    common = common[labels >= 0]
    if len(common) > rows:
        common = np.sort(np.random.default_rng(seed).choice(common, rows, replace=False))
    weights = zeroshot_weights(teacher, check_classnames(source.classes), get_templates(None, source.spec),
                               progress=False)  # [C, d]
    images = torch.from_numpy(pix.gather(np.searchsorted(pix.index, common))).view(-1, *pixel_encoder.shape)
    if pixel_encoder.dtype == "uint8":
        images = images.to(torch.uint8)
    return HeldOut(images, torch.from_numpy(np.asarray(source.labels)[common]),
                   torch.from_numpy(tch.gather(np.searchsorted(tch.index, common))), weights.float().cpu(), finish)


def check_image_sizes(source: DataSource, side: int, sample: int = 16) -> int | None:
    """The smallest side among a few seeded rows when it is below the student's input `side`, else None."""
    picks = np.random.default_rng(0).choice(len(source), min(sample, len(source)), replace=False)
    smallest = None
    for i in picks:
        try:
            size = min(source.load_image(int(i)).size)
        except Exception:  # noqa: BLE001, S112 - a bad image is skipped later, and listed by the cache
            continue
        smallest = size if smallest is None else min(smallest, size)
    return smallest if smallest is not None and smallest < side else None


# ---------------------------------------------------------------- the command
def make_loss(cfg: DistillConfig, teacher: VLM, texts: list[str], prompts: Callable[[], Prompts],
              labels: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """The loss module and what config.json records of it (`prompts`: the vocabulary, encoded when asked;
    `labels`: the class weights [L, d] of --labels, whose KL term goes beside the chosen loss)."""
    loss, record = _base_loss(cfg, teacher, texts, prompts)
    if labels is None:
        return loss, record
    term = KLLoss(labels, cfg.tau, cfg.label_weight, "kl-labels")
    return Terms([loss, term]), {**record, "labels": {"count": len(labels), "weight": cfg.label_weight, "tau": cfg.tau,
                                                    "templates": cfg.templates or "default"}}


def label_weights(cfg: DistillConfig, teacher: VLM) -> torch.Tensor | None:
    """The teacher's zero-shot class weights [L, d] of --labels (under --templates), or None without them."""
    if cfg.labels is None:
        return None
    from ..data.templates import get_templates
    from ..zeroshot.classifier import check_classnames, zeroshot_weights
    from ..zeroshot.labels import parse_labels

    names = check_classnames(parse_labels(cfg.labels, files=True), at_least=2)
    return zeroshot_weights(teacher, names, get_templates(cfg.templates, None)).float().cpu()


def _base_loss(cfg: DistillConfig, teacher: VLM, texts: list[str], prompts: Callable[[], Prompts]) -> tuple[nn.Module, dict]:
    record: dict = {"name": cfg.loss}
    if cfg.loss == "l2":
        record["normalize"] = cfg.normalize
        return L2Loss(cfg.normalize), record
    if cfg.loss == "cosine":
        return CosineLoss(), record
    if cfg.loss == "contrastive-feature":
        return ContrastiveFeatureLoss(cfg.temperature), {**record, "temperature": cfg.temperature}
    if cfg.loss == "contrastive-text":
        emb = encode_prompts(teacher, texts, len(texts), not cfg.quiet).embeddings  # [U, d]
        return ContrastiveTextLoss(emb, cfg.temperature), {**record, "temperature": cfg.temperature,
                                                           "texts": len(texts)}
    vocab = prompts()
    return KLLoss(vocab.class_weights(), cfg.tau), {**record, "tau": cfg.tau, "prompts": cfg.prompts,
                                                     "classes": vocab.groups}


def distill(cfg: DistillConfig, progress: bool = True) -> VLM:
    """Train `cfg.student` on `cfg.data` to reproduce `cfg.teacher`'s image embeddings and write the run
    folder (config.json, model.safetensors, README.md, metrics.jsonl, loss.png, accuracy.png); returns it
    loaded as a VLM (student image tower + teacher text tower).

    The teacher's embeddings of `cfg.views` augmented views per image and the student's pixels of the same
    views are cached once, so every epoch costs student passes only and the student always regresses
    the embedding of the very pixels it sees. A `cfg.holdout` share of the images is held out and scored
    each epoch by top-1 agreement with the teacher over the prompt vocabulary; the best epoch is kept.
    Checkpoints go to OUT.ckpt beside the run; a rerun of the same command after a kill resumes there.
    With `cfg.eval_data`, a seeded subset is scored every epoch (reported, never chosen on) and the
    finished run is evaluated as `zeroshift eval --model run:OUT` would, with records in OUT/results.
    """
    from ..compose import STUDENT_EXAMPLES, build_student
    from ..models.student import param_count
    from ..specs import dataset, load, require

    progress = progress and not cfg.quiet
    require(cfg.teacher, "vlm", "teacher", "--teacher")  # by the specs' kinds, before any data or model is opened
    require(cfg.student, "image", "student", "--student", examples=STUDENT_EXAMPLES)
    recipe = parse_augment(cfg.augment)
    identity = {"teacher": cfg.teacher, "student": cfg.student, "loss": cfg.loss}
    run = Run(cfg, "student", identity, need_labels=True)
    sources = [dataset(spec) for spec in cfg.data]
    splits = split_sources(sources, cfg.holdout, cfg.seed)  # a bad share fails before any model loads
    with run:
        teacher = load(cfg.teacher, runtime=cfg.runtime)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            student = build_student(cfg.student, teacher.dim)
        pixel_encoder, finish = pixel_pipeline(student.image_transform)
        side = min(pixel_encoder.shape[1:])
        for source in sources:
            small = check_image_sizes(source, side)
            if small is not None and cfg.views == 1:
                warnings.warn(f"{source.spec}: images as small as {small} px are upscaled to the student's {side} px "
                              "input (the teacher upscales them too)", stacklevel=2)
        t0 = time.perf_counter()
        online, teacher_pixels = None, None
        if cfg.mixup > 0:  # the teacher runs in the loop on mixed views: cache its own pixels of each view
            teacher_pixels, teacher_finish = pixel_pipeline(teacher.image_transform)
            online = online_teacher(teacher, teacher_finish)
        prep = build_rows(teacher, pixel_encoder, sources, cfg.loss == "contrastive-text", cfg.runtime, progress,
                          cfg.views, recipe, cfg.holdout, cfg.seed, teacher_pixels, splits=splits)
        rows = prep.rows
        vocab: list[Prompts] = []

        def prompts() -> Prompts:  # the vocabulary, encoded once for the kl loss and the held-out agreement
            if not vocab:
                words, groups = vocabulary(cfg.prompts)
                vocab.append(encode_prompts(teacher, words, groups, progress))
            return vocab[0]

        labels = label_weights(cfg, teacher)  # [L, d] or None
        loss, loss_record = make_loss(cfg, teacher, prep.texts, prompts, labels)
        agreement = None if prep.held_images is None else Agreement(prep.held_targets, prompts().class_weights())
        among_labels = None if agreement is None or labels is None else Agreement(prep.held_targets, labels)
        scorer = None if run.eval_source is None else held_out(
            teacher, pixel_encoder, finish, run.eval_source, cfg.eval_rows, cfg.seed, cfg.runtime, progress)
        prepare_seconds = time.perf_counter() - t0

        def evaluate() -> dict[str, float]:
            out = {}
            if agreement is not None:
                emb = embed_images(student, finish, prep.held_images)  # [n, d]
                out.update({f"holdout_{k}": v for k, v in agreement(emb).items()})
                if among_labels is not None:
                    out["holdout_labels_agreement"] = among_labels(emb)["agreement"]
            return {**out, **({} if scorer is None else scorer(student))}

        task = DistillTask(student, finish, loss, online)
        tcfg = cfg.train_config(ema=cfg.ema, memory_format=preferred_format(student))  # channels_last for CNNs
        checkpoints = run.checkpoints(data=[e["fingerprint"] for e in prep.entries],
                                      dims=[teacher.dim, pixel_encoder.dim])
        t1 = time.perf_counter()
        batches = rows.batches(cfg.batch_size, cfg.seed, cfg.student_augment, cfg.mixup)
        history = train(task, batches, tcfg, run.path, progress, checkpoints,
                        None if agreement is None and scorer is None else evaluate,
                        keep_best=None if agreement is None else (
                            "holdout_agreement" if among_labels is None else ("holdout_labels_agreement",
                                                                              "holdout_agreement")))
        train_seconds = time.perf_counter() - t1
        plot_history(history, run.path / "loss.png", title=f"distill {cfg.loss}: {cfg.student} <- {cfg.teacher}")
        plot_eval(history, run.path / "accuracy.png", title="held out: " + ", ".join(
            ([f"{cfg.holdout:g} of the fit images (no labels)"] if agreement else []) + (
                [cfg.eval_data] if cfg.eval_data else [])))
        student = student.cpu().eval()
        kept = next((r for r in reversed(history) if "kept_by" in r), None)
        config = {
            "teacher": cfg.teacher, "student": student.encoder.spec,  # canonical: presets spelled out
            "dims": {"teacher": teacher.dim, "student": int(student.encoder.dim)},
            "input": list(pixel_encoder.shape), "params": param_count(student),
            "loss": loss_record, "views": {"count": cfg.views, "recipe": recipe.canonical()},
            "student_augment": cfg.student_augment, "mixup": cfg.mixup,
            "holdout": {"share": cfg.holdout, "images": sum(e["held_out_used"] for e in prep.entries),
                        "vocabulary": cfg.prompts or "imagenet", "labels": labels is not None, "kept": kept},
            "train": {**asdict(tcfg), "batch_size": cfg.batch_size, "steps": len(batches(0)) * cfg.epochs},
            "data": prep.entries, "rows": len(rows),
            "seconds": {"prepare": round(prepare_seconds, 2), "train": round(train_seconds, 2)},
            "cost": {"student": image_cost(student), "teacher": image_cost(teacher, cache=True)},  # teacher: once per machine
        }
        state = {f"student.{k}": v for k, v in student.state_dict().items()}
        return run.finish(config, state, lambda config, records: model_card(config, history, records), progress,
                          command="distill", rows=len(rows), history=history, teacher=teacher)


# ---------------------------------------------------------------- model card
def model_card(config: dict, history: list[dict], records: list[dict] | None = None) -> str:
    """README.md of a student run: what it is, how it was made, its results and how to use it."""
    o, t = config["options"], config["train"]
    loss = ", ".join(f"{k} {v}" for k, v in config["loss"].items() if k not in ("name", "labels"))
    lab = config["loss"].get("labels")
    label_term = "" if not lab else (f" + {lab['weight']:g} x KL of the teacher's zero-shot distributions over the "
                                f"{lab['count']} --labels (tau {lab['tau']:g}, templates {lab['templates']})")
    data = "; ".join(f"`{d['spec']}` ({d['rows_used']} images)" for d in config["data"])
    evals = [r for r in history if any(k.startswith("eval/") and "holdout" not in k for k in r)]
    lines = [
        f"# zeroshift student: {config['student']} <- {config['teacher']}", "",
        (f"A {config['params'] / 1e6:.2f}M-parameter student image encoder (`{config['student']}`, "
         f"{config['input'][1]}x{config['input'][2]} input) trained to reproduce the image embeddings of "
         f"`{config['teacher']}`; with that teacher's text tower it classifies zero-shot. Built with zeroshift "
         f"{config['zeroshift_version']} (`zeroshift distill`)."), "",
        "| | |", "|---|---|",
        f"| teacher | `{config['teacher']}` ({config['dims']['teacher']}-d joint space) |",
        (f"| student | `{config['student']}` + linear head ({config['dims']['student']} -> {config['dims']['teacher']}), "
        f"{config['params']:,} parameters |"),
        f"| loss | {config['loss']['name']}{' (' + loss + ')' if loss else ''}{label_term} |",
        f"| training images | {data}; {_views(config)} |",
        (f"| training | {t['epochs']} epochs, {t['steps']} steps, AdamW lr {t['lr']:g}, weight decay {t['weight_decay']:g}, "
        f"batch {t['batch_size']}, warm-up {t['warmup']:g} then cosine, precision {t['precision']} |"),
        (f"| time | {config['seconds']['train']} s training, {config['seconds']['prepare']} s caching teacher "
        f"targets and pixels |"),
    ]
    held = config.get("holdout") or {}
    if held.get("share"):
        kept = held.get("kept") or {}
        chosen = (f"kept epoch {kept['kept_epoch']} (agreement {kept['kept_score']:.3f})"
                  if kept.get("kept_epoch") is not None else "kept the last epoch")
        over = "the --labels, then over the " if held.get("labels") else "the "
        lines.append(f"| model selection | {held['share']:g} of the images held out ({held['images']} images, no labels), "
                     f"scored each epoch by top-1 agreement with the teacher over {over}{held['vocabulary']} "
                     f"vocabulary; {chosen}{', EMA ' + format(t['ema'], 'g') if t.get('ema') else ''} |")
    if config.get("resumed_from_step"):
        lines.append(f"| resumed | from the checkpoint of step {config['resumed_from_step']} |")
    if evals:
        last = evals[-1]
        shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in last.items() if k.startswith("eval/") and "holdout" not in k)
        lines.append(f"| held out, last epoch | `{o['eval_data']}` ({o['eval_rows']} rows at most): {shown} |")
    if config.get("cost"):
        lines += ["", "## Student and teacher image tower", "", *cost_rows(config["cost"]["student"], config["cost"]["teacher"])]
    lines += card_tail(o["out"], records, [f"zeroshift export run:{o['out']} --labels 'cat,dog' --out student.onnx"],
                       "`config.json` (every option), `model.safetensors` (student and head), `metrics.jsonl`, "
                       "`loss.png` and `accuracy.png` (held-out scores per epoch).")
    return "\n".join(lines)


def _views(config: dict) -> str:
    """How the student saw the training images, for the card."""
    views = config.get("views") or {"count": 1}
    what = ("the images as they are" if views["count"] == 1 else
            f"{views['count']} cached views per image ({views['recipe']}), each with the teacher's embedding of that view")
    extra = config.get("student_augment", config.get("augment", "none"))
    return what + ("" if extra == "none" else f"; student-side augmentation {extra} (inconsistent with the targets)")
