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

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import Features, embed
from ..data.base import DataSource
from ..errors import CacheMismatch, DataError
from ..models.pixels import PixelRows, pixel_pipeline
from ..models.vlm import VLM
from ..report import card_tail
from ..train import plot_eval, plot_history, train
from ..train.batches import Epoch
from ..train.fast import preferred_format
from ..zeroshot.prompts import Prompts, encode_prompts, vocabulary
from .common import Run
from .config import AUGMENT, DistillConfig  # noqa: F401  (DistillConfig, AUGMENT: re-exported)
from .config import DISTILL_LOSSES as LOSSES  # noqa: F401  (re-exported)
from .losses import ContrastiveFeatureLoss, ContrastiveTextLoss, CosineLoss, KLLoss, L2Loss

PIXEL_SHARD_ROWS = 1024  # a shard of 64 px images is 12 MB as uint8

class DistillTask(nn.Module):
    """One step: finish the cached pixels (scale, normalise), run the student, score it by the loss."""

    def __init__(self, student: nn.Module, finish: Callable[[torch.Tensor], torch.Tensor], loss: nn.Module) -> None:
        super().__init__()
        self.student, self.loss = student, loss
        self.finish = finish

    def step(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        s = self.student(self.finish(batch["pixels"])).float()  # [B, d]
        return self.loss(s, batch), {}


# ---------------------------------------------------------------- data
class Rows:
    """Training rows over one or more sources: cached student pixels beside teacher targets [N, d]."""

    def __init__(self, pixels: list[Features], positions: list[np.ndarray], targets: torch.Tensor,
                 texts: np.ndarray | None, shape: tuple[int, ...]) -> None:
        self.pixels, self.targets, self.texts = PixelRows(pixels, shape), targets, texts
        starts = self.pixels.bounds[:-1]  # [K] first global row of each cache
        self.index = np.concatenate([starts[k] + p for k, p in enumerate(positions)])  # [N] global pixel row

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, rows: np.ndarray) -> torch.Tensor:
        """Cached pixels of `rows` as [B, 3, H, W] (uint8 where the cache is)."""
        return self.pixels(self.index[rows])

    def batches(self, batch_size: int, seed: int, augment: str) -> Callable[[int], Epoch]:
        """Epochs of batches {pixels [B, 3, H, W], target [B, d], text [B]?}, augmented per (seed, epoch, batch)."""

        def make(rows: np.ndarray, g: torch.Generator) -> dict:
            batch = {"pixels": augment_batch(self.images(rows), augment, g), "target": self.targets[rows]}
            if self.texts is not None:
                batch["text"] = torch.from_numpy(self.texts[rows])
            return batch

        return lambda epoch: Epoch(len(self), batch_size, seed, epoch, make, min_batch=2)


def augment_batch(images: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips ('flip'), plus one random crop of 75-100% of the side per batch at a
    random place per image, resized back ('light'). [B, 3, H, W] in, same shape and dtype out."""
    if mode == "none":
        return images
    flip = torch.rand(len(images), generator=g) < 0.5  # [B]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if mode == "flip":
        return images
    h, w = images.shape[-2:]
    side = int(torch.randint(math.ceil(0.75 * min(h, w)), min(h, w) + 1, (1,), generator=g))
    ys = torch.randint(0, h - side + 1, (len(images),), generator=g).tolist()
    xs = torch.randint(0, w - side + 1, (len(images),), generator=g).tolist()
    crops = torch.stack([im[:, y:y + side, x:x + side] for im, y, x in zip(images, ys, xs)])  # [B, 3, side, side]
    if side == h == w:
        return crops
    resized = F.interpolate(crops.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return resized.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else resized


def _texts(source: DataSource, rows: np.ndarray) -> list[str]:
    """The text of each row for contrastive-text: its caption, else 'a photo of a {class}.'."""
    out = []
    for r in rows:
        caption = source.captions[r].strip() if source.captions is not None and source.captions[r] else ""
        label = int(source.labels[r]) if source.labels is not None else -1
        if not caption and label >= 0 and source.classes:
            caption = f"a photo of a {source.classes[label]}."
        if not caption:
            raise DataError(f"contrastive-text needs a caption or a class label for every image; row {r} of "
                            f"{source.spec!r} has neither")
        out.append(caption)
    return out


def build_rows(teacher: VLM, pixel_encoder, sources: list[DataSource], want_texts: bool, runtime: str,
               progress: bool) -> tuple[Rows, list[str], list[dict]]:
    """Embed every source with the teacher and cache its student pixels; align the valid rows of both.
    Returns (rows, unique texts for contrastive-text, a data entry per source for config.json)."""
    pixels, positions, targets, text_rows, entries = [], [], [], [], []
    for source in sources:
        tch = embed(teacher, source, runtime=runtime, progress=progress, role="teacher")
        if tch.dim != teacher.dim:
            raise CacheMismatch(f"feature cache {tch.path} holds {tch.dim}-d features but the teacher "
                                f"{teacher.spec} gives {teacher.dim}-d: re-embed with overwrite")
        pix = embed(pixel_encoder, source, runtime="torch", dtype=pixel_encoder.dtype,
                    shard_rows=PIXEL_SHARD_ROWS, progress=progress, role="student pixels")
        common = np.intersect1d(tch.index, pix.index)  # source rows decoded by both
        if len(common) < 2:
            raise DataError(f"{source.spec!r} has {len(common)} usable image(s); distillation needs at least 2")
        targets.append(torch.from_numpy(tch.gather(np.searchsorted(tch.index, common))))  # [n, d]
        pixels.append(pix)
        positions.append(np.searchsorted(pix.index, common))
        if want_texts:
            text_rows.extend(_texts(source, common))
        entries.append({"spec": source.spec, "fingerprint": source.fingerprint(), "rows": len(source),
                        "rows_used": len(common)})
    unique = list(dict.fromkeys(text_rows))
    ids = None
    if want_texts:
        lookup = {t: i for i, t in enumerate(unique)}
        ids = np.array([lookup[t] for t in text_rows], dtype=np.int64)
    return Rows(pixels, positions, torch.cat(targets), ids, pixel_encoder.shape), unique, entries


# ---------------------------------------------------------------- held-out scoring
class HeldOut:
    """A labelled real set scored each epoch: student zero-shot acc1, top-1 agreement with the
    teacher's zero-shot prediction, and mean cosine between student and teacher embeddings."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
                 finish: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.images, self.labels, self.teacher, self.weights = images, labels, teacher, weights  # [n, ...], [n], [n, d], [C, d]
        self.teacher_pred = (F.normalize(teacher, dim=-1) @ weights.T).argmax(-1)  # [n]
        self.finish = finish

    def __call__(self, student: nn.Module, batch_size: int = 256) -> dict[str, float]:
        device = next(student.parameters()).device
        with torch.inference_mode():
            emb = torch.cat([student(self.finish(self.images[i:i + batch_size].to(device))).float().cpu()
                             for i in range(0, len(self.images), batch_size)])  # [n, d]
        pred = (F.normalize(emb, dim=-1) @ self.weights.T).argmax(-1)  # [n]
        return {"acc1": (pred == self.labels).float().mean().item(),
                "agreement": (pred == self.teacher_pred).float().mean().item(),
                "cosine": F.cosine_similarity(emb, self.teacher, dim=-1).mean().item()}


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
def make_loss(cfg: DistillConfig, teacher: VLM, texts: list[str], progress: bool) -> tuple[nn.Module, dict]:
    """The loss module and what config.json records of it."""
    record: dict = {"name": cfg.loss}
    if cfg.loss == "l2":
        record["normalize"] = cfg.normalize
        return L2Loss(cfg.normalize), record
    if cfg.loss == "cosine":
        return CosineLoss(), record
    if cfg.loss == "contrastive-feature":
        return ContrastiveFeatureLoss(cfg.temperature), {**record, "temperature": cfg.temperature}
    if cfg.loss == "contrastive-text":
        emb = encode_prompts(teacher, texts, len(texts), progress).embeddings  # [U, d]
        return ContrastiveTextLoss(emb, cfg.temperature), {**record, "temperature": cfg.temperature,
                                                           "texts": len(texts)}
    words, groups = vocabulary(cfg.prompts)
    prompts: Prompts = encode_prompts(teacher, words, groups, progress)
    return KLLoss(prompts.class_weights(), cfg.tau), {**record, "tau": cfg.tau, "prompts": cfg.prompts,
                                                       "classes": groups}


def distill(cfg: DistillConfig, progress: bool = True) -> VLM:
    """Train `cfg.student` on `cfg.data` to reproduce `cfg.teacher`'s image embeddings and write the run
    folder (config.json, model.safetensors, README.md, metrics.jsonl, loss.png, accuracy.png); returns it
    loaded as a VLM (student image tower + teacher text tower).

    Checkpoints go to OUT.ckpt beside the run; a rerun of the same command after a kill resumes there.
    With `cfg.eval_data`, a seeded subset is scored every epoch and the finished run is evaluated as
    `zeroshift eval --model run:OUT` would, with records in OUT/results.
    """
    from ..compose import STUDENT_EXAMPLES, build_student
    from ..models.student import param_count
    from ..specs import dataset, load, require

    progress = progress and not cfg.quiet
    require(cfg.teacher, "vlm", "teacher", "--teacher")  # by the specs' kinds, before any data or model is opened
    require(cfg.student, "image", "student", "--student", examples=STUDENT_EXAMPLES)
    identity = {"teacher": cfg.teacher, "student": cfg.student, "loss": cfg.loss}
    run = Run(cfg, "student", identity, need_labels=True)
    sources = [dataset(spec) for spec in cfg.data]
    with run:
        teacher = load(cfg.teacher, runtime=cfg.runtime)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            student = build_student(cfg.student, teacher.dim)
        pixel_encoder, finish = pixel_pipeline(student.image_transform)
        side = min(pixel_encoder.shape[1:])
        for source in sources:
            small = check_image_sizes(source, side)
            if small is not None:
                warnings.warn(f"{source.spec}: images as small as {small} px are upscaled to the student's {side} px "
                              "input (the teacher upscales them too)", stacklevel=2)
        t0 = time.perf_counter()
        rows, texts, entries = build_rows(teacher, pixel_encoder, sources, cfg.loss == "contrastive-text",
                                          cfg.runtime, progress)
        loss, loss_record = make_loss(cfg, teacher, texts, progress)
        scorer = None if run.eval_source is None else held_out(
            teacher, pixel_encoder, finish, run.eval_source, cfg.eval_rows, cfg.seed, cfg.runtime, progress)
        prepare_seconds = time.perf_counter() - t0
        task = DistillTask(student, finish, loss)
        tcfg = cfg.train_config(memory_format=preferred_format(student))  # channels_last for CNNs
        checkpoints = run.checkpoints(data=[e["fingerprint"] for e in entries], dims=[teacher.dim, pixel_encoder.dim])
        t1 = time.perf_counter()
        batches = rows.batches(cfg.batch_size, cfg.seed, cfg.augment)
        history = train(task, batches, tcfg, run.path, progress, checkpoints,
                        None if scorer is None else lambda: scorer(student))
        train_seconds = time.perf_counter() - t1
        plot_history(history, run.path / "loss.png", title=f"distill {cfg.loss}: {cfg.student} <- {cfg.teacher}")
        plot_eval(history, run.path / "accuracy.png", title=f"held out: {cfg.eval_data}")
        student = student.cpu().eval()
        config = {
            "teacher": cfg.teacher, "student": cfg.student,
            "dims": {"teacher": teacher.dim, "student": int(student.encoder.dim)},
            "input": list(pixel_encoder.shape), "params": param_count(student),
            "loss": loss_record, "augment": cfg.augment,
            "train": {**asdict(tcfg), "batch_size": cfg.batch_size, "steps": len(batches(0)) * cfg.epochs},
            "data": entries, "rows": len(rows),
            "seconds": {"prepare": round(prepare_seconds, 2), "train": round(train_seconds, 2)},
        }
        state = {f"student.{k}": v for k, v in student.state_dict().items()}
        return run.finish(config, state, lambda config, records: model_card(config, history, records), progress,
                          command="distill", rows=len(rows), history=history, teacher=teacher)


# ---------------------------------------------------------------- model card
def model_card(config: dict, history: list[dict], records: list[dict] | None = None) -> str:
    """README.md of a student run: what it is, how it was made, its results and how to use it."""
    o, t = config["options"], config["train"]
    loss = ", ".join(f"{k} {v}" for k, v in config["loss"].items() if k != "name")
    data = "; ".join(f"`{d['spec']}` ({d['rows_used']} images)" for d in config["data"])
    evals = [r for r in history if any(k.startswith("eval/") for k in r)]
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
        f"| loss | {config['loss']['name']}{' (' + loss + ')' if loss else ''} |",
        f"| training images | {data}; augmentation {config['augment']} |",
        (f"| training | {t['epochs']} epochs, {t['steps']} steps, AdamW lr {t['lr']:g}, weight decay {t['weight_decay']:g}, "
        f"batch {t['batch_size']}, warm-up {t['warmup']:g} then cosine, precision {t['precision']} |"),
        (f"| time | {config['seconds']['train']} s training, {config['seconds']['prepare']} s caching teacher "
        f"targets and pixels |"),
    ]
    if config.get("resumed_from_step"):
        lines.append(f"| resumed | from the checkpoint of step {config['resumed_from_step']} |")
    if evals:
        last = evals[-1]
        shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in last.items() if k.startswith("eval/"))
        lines.append(f"| held out, last epoch | `{o['eval_data']}` ({o['eval_rows']} rows at most): {shown} |")
    lines += card_tail(o["out"], records, [f"zeroshift export run:{o['out']} --labels 'cat,dog' --out student.onnx"],
                       "`config.json` (every option), `model.safetensors` (student and head), `metrics.jsonl`, "
                       "`loss.png` and `accuracy.png` (held-out scores per epoch).")
    return "\n".join(lines)
