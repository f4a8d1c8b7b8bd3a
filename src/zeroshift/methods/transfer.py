"""`transfer`: give any vision encoder zero-shot ability through a bridge into a VLM's joint space.

Methods (DESIGN 3.1): `zoomshot` (Zoom-shot's cycle and prompt-guided distillation terms plus paired
MSE, one epoch of AdamW from the closed-form warm start), `ttc` (Text-to-Concept's affine SGD recipe)
and `lstsq` (closed-form ridge). Training reads cached features only: no labels, no captions. The loss
terms are in losses.py; docs/transfer.md explains them, the prompt vocabulary and how the defaults
were chosen, and bench/transfer.py measures every method and bridge kind side by side.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache import Features
from ..cache.views import embed_views, views_in
from ..data.augment import parse_augment
from ..data.base import DataSource, Subset
from ..errors import CacheMismatch, DataError, ZeroshiftError
from ..models.bridge import Bridge
from ..models.vlm import VLM
from ..report import card_tail
from ..train.checkpoint import Checkpoints
from ..train.loop import TrainConfig, plot_history, train
from ..zeroshot.prompts import DEFAULT_TEMPLATES, Prompts, encode_prompts, vocabulary
from .bridge_rows import FitRows, parts_of  # noqa: F401  (FitRows: re-exported)
from .common import Run
from .config import METHODS, PGKD, TransferConfig  # noqa: F401  (TransferConfig, METHODS, PGKD: re-exported)
from .config import TRANSFER_LOSSES as LOSSES
from .holdout import split_images
from .losses import CycleLoss, MSELoss, PGKDLoss, Terms, Views
from .selection import card_lines, choose_ridge, record


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
        return cfg.train_config(epochs=_given(cfg.epochs, 5), lr=_given(cfg.lr, 0.01),
                                weight_decay=_given(cfg.weight_decay, 5e-4), warmup=_given(cfg.warmup, 0.0),
                                grad_clip=0.0, optimizer="sgd", momentum=0.9, cosine=False), _given(cfg.batch_size, 100)
    epochs = 10 if cfg.bridge == "mlp" and selects(cfg) else 1  # the held-out split stops the mlp: give it room
    return cfg.train_config(epochs=_given(cfg.epochs, epochs), lr=_given(cfg.lr, 1e-3),
                            weight_decay=_given(cfg.weight_decay, 0.0), warmup=_given(cfg.warmup, 0.0),
                            grad_clip=0.0, optimizer="adamw", cosine=True), _given(cfg.batch_size, 256)


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def selects(cfg: TransferConfig) -> bool:
    """Whether a held-out split chooses the ridge and the epoch: paired fits with --holdout above 0 (an
    unpaired fit has no image both encoders saw, so nothing to score the bridge on)."""
    return cfg.paired and cfg.holdout > 0


class BridgeTask(nn.Module):
    """The zoomshot and ttc task for train/loop.py: a bridge, its loss terms and the frozen prompts.
    Each batch names its own prompt minibatch ("text"), drawn from the batch's seeded generator, so
    every rank and a resumed run draw the same one."""

    def __init__(self, bridge: Bridge, losses: list[nn.Module], prompts: Prompts | None, paired: bool) -> None:
        super().__init__()
        self.bridge, self.losses, self.paired = bridge, Terms(losses), paired
        text = prompts.embeddings if prompts is not None else torch.zeros(0, bridge.teacher_dim)
        self.register_buffer("text", text.float())  # [P, d] raw teacher text embeddings

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        b = self.bridge
        zs, zc = batch["source"], batch["teacher"]  # [B, m], [B', d] raw
        us = b.to_source(zs)
        views = Views(us=us, uc=b.to_teacher(zc), hs=b.h(us), ut=b.to_teacher(self.text[batch["text"]]), zc=zc)
        return self.losses(b, views), {}


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


# ---------------------------------------------------------------- fitting
@dataclass
class Fit:
    bridge: Bridge
    history: list[dict]
    rows: tuple[int, int]  # source and teacher rows used
    seconds: float
    ridge: float | None = None  # the ridge the closed form used (None: no closed form)
    selection: dict | None = None  # what the held-out split said (selection.record)
    used: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # fit rows of each source cache and of each teacher cache
    splits: list[tuple[int, int]] = field(default_factory=list)  # (fit, held) images of each paired source


def fit(cfg: TransferConfig, source: Features | Sequence[Features], teacher: Features | Sequence[Features],
        prompts: Prompts | None = None, run_dir: Path | None = None, progress: bool = True,
        checkpoints: Checkpoints | None = None, vocabulary: torch.Tensor | None = None) -> Fit:
    """Fit a bridge from cached features (paired rows of one or more data sets, `source[k]` and
    `teacher[k]` the two encoders' caches of set k; or unpaired sets; with `cfg.views` > 1, rows of
    view caches, K adjacent rows per image) by `cfg.method`. `prompts` is needed when a zoomshot cycle
    or pgkd term is on; with `checkpoints` the training steps resume from the last one. With a held-out
    split (`cfg.holdout`, paired; per set, by image), the images held out choose the ridge from
    `cfg.ridge_grid` and the epoch kept (the warm start counting as epoch 0), scored over the class
    vectors `vocabulary` [C, d] (default: the prompts')."""
    t0 = time.perf_counter()
    sources, teachers = parts_of(source), parts_of(teacher)
    if cfg.method == "zoomshot" and prompts is None and {"cycle", "pgkd"} & set(loss_weights(cfg)):
        raise ZeroshiftError("the cycle and pgkd terms need the prompt vocabulary's embeddings")
    if prompts is not None and prompts.embeddings.shape[1] != teachers[0].dim:
        raise CacheMismatch(f"the prompt embeddings are {prompts.embeddings.shape[1]}-d but the teacher "
                            f"features in {teachers[0].path} are {teachers[0].dim}-d")
    for feats in sources + teachers:  # K adjacent rows per image is what the split and the ridge assume
        spec = getattr(feats, "manifest", {}).get("data_spec")
        theirs = 1 if views_in(spec) is None else views_in(spec)[1]
        if spec and theirs != cfg.views:
            raise CacheMismatch(f"feature cache {feats.path} holds {theirs} view(s) per image, not the {cfg.views} "
                                "asked for (--views)")
    rows = FitRows(sources, teachers, cfg.paired, cfg.views, cfg.holdout if selects(cfg) else 0.0, cfg.seed)
    if rows.held is not None and vocabulary is None:
        if prompts is None:
            raise ZeroshiftError("held-out selection scores over a vocabulary: give its class vectors or the prompts")
        vocabulary = prompts.class_weights()
    held = None if rows.held is None else rows.held_out(vocabulary)
    torch.manual_seed(cfg.seed)
    bridge = Bridge(rows.source.dim, rows.teacher.dim, cfg.bridge, cfg.hidden, center=cfg.method != "ttc")
    closed_form = cfg.method == "lstsq" or (cfg.method == "zoomshot" and cfg.paired and cfg.warm_start)
    ms, mc, ks, kc = rows.moments(scatter=closed_form)
    bridge.set_alignment(ms, mc, ks, kc)
    ridge, grid, start = (cfg.ridge if closed_form else None), None, None
    if closed_form and held is not None and len(cfg.ridge_grid) > 1:
        ridge, grid = choose_ridge(bridge, ms, cfg.ridge, cfg.ridge_grid, cfg.views, held)
    elif closed_form:  # the ridge counts images: K views of one weigh as much as the image
        bridge.fit_ridge(ms, cfg.ridge * cfg.views)
    history: list[dict] = []
    options, kept = train_config(cfg), None
    if options is not None:
        tcfg, batch_size = options
        bridge.g.requires_grad_("cycle" in loss_weights(cfg))  # g is trained by the cycle terms alone
        if held is not None and closed_form:  # the warm start is a candidate too (kept as epoch 0)
            start = held.score(bridge)
        task = BridgeTask(bridge, make_losses(cfg, prompts), prompts, cfg.paired)
        batches = rows.batches(batch_size, cfg.seed, len(task.text))
        evaluate = None if held is None else (lambda: held.score(bridge))
        history = train(task, batches, tcfg, run_dir, progress, checkpoints, evaluate=evaluate,
                        keep_best=("agreement", "cosine"), start_scores=start)  # the loop restores the best
        row = next((r for r in reversed(history) if "kept_by" in r), None)
        kept = None if row is None or row["kept_epoch"] is None else row["kept_epoch"] + 1  # 0: the warm start
    elif held is not None:
        start = held.score(bridge)
    selection = None if held is None else record(held, cfg.holdout, rows.images, grid, ridge, start, history, kept)
    return Fit(bridge.cpu().eval(), history, (len(rows.ps), len(rows.pc)), time.perf_counter() - t0, ridge, selection,
               rows.used, rows.splits)


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


def _data_entry(source: DataSource, rows: int, views: int = 1, split: tuple[int, int] | None = None) -> dict:
    """One fit source in config.json: its images (`rows`, as before views), the cached rows fitted and,
    with a held-out split, its (fit, held) images."""
    entry = {"spec": source.spec, "fingerprint": source.fingerprint(), "rows": len(source), "views": views,
             "rows_used": rows}
    if split is not None:
        entry.update(images_fit=split[0], images_held_out=split[1])
    return entry


def data_entries(config: dict) -> list[dict]:
    """A bridge run's fit sources (config.json "data"): a list, or the one dict runs before several
    --data wrote."""
    data = config.get("data")
    return [data] if isinstance(data, dict) else list(data or [])


def transfer(cfg: TransferConfig, progress: bool = True) -> VLM:
    """Fit a bridge from `cfg.encoder` into `cfg.teacher`'s joint space and write it as a run folder
    (config.json, model.safetensors, README.md, metrics.jsonl, loss.png); returns it loaded as a VLM.

    With `cfg.eval_data`, the finished run is evaluated as `zeroshift eval --model run:OUT` would
    (so later evaluations reuse its feature cache); the records go to OUT/results and the results
    table into the model card.
    """
    from ..specs import load, require

    progress = progress and not cfg.quiet
    require(cfg.teacher, "vlm", "teacher", "--teacher")  # by the specs' kinds, before any data or model is opened
    require(cfg.encoder, ("image", "vlm"), "encoder", "--encoder")
    run = Run(cfg, "bridge", {"teacher": cfg.teacher, "encoder": cfg.encoder, "data": cfg.data, "method": cfg.method})
    source_data = [fit_source(spec, cfg.data_fraction, cfg.seed, "--data") for spec in cfg.data]
    teacher_data = source_data if cfg.paired else [fit_source(
        cfg.unpaired_data, cfg.data_fraction, cfg.seed, "--unpaired-data")]
    weights = loss_weights(cfg)
    needs_prompts = cfg.method == "zoomshot" and bool({"cycle", "pgkd"} & set(weights))
    texts, groups = vocabulary(cfg.prompts) if needs_prompts or selects(cfg) else ([], 0)
    if selects(cfg):  # a split that leaves too few fit images fails before any model loads
        for source in source_data:  # each source is split on its own, named when there are several
            what = source.spec if len(source_data) > 1 else "the fit data"
            split_images(len(source), cfg.holdout, cfg.seed, what=what)
    recipe = parse_augment(cfg.augment)
    with run:
        encoder, teacher = load(cfg.encoder, runtime=cfg.runtime), load(cfg.teacher, runtime=cfg.runtime)
        t0 = time.perf_counter()
        # each source is cached on its own, whole (its views), as distill, eval and embed cache it: a
        # held-out split only picks rows of them, and the fit reads the sources' rows end to end
        src = [embed_views(encoder, data, views=cfg.views, augment=recipe, runtime=cfg.runtime,
                           progress=progress, role="encoder") for data in source_data]
        tch = [embed_views(teacher, data, views=cfg.views, augment=recipe, runtime=cfg.runtime,
                           progress=progress, role="teacher") for data in teacher_data]
        for name, caches, model in (("encoder", src, encoder), ("teacher", tch, teacher)):
            for feats in caches:
                if feats.dim != model.dim:
                    raise CacheMismatch(f"feature cache {feats.path} holds {feats.dim}-d features but the {name} "
                                        f"{model.spec} gives {model.dim}-d: re-embed with overwrite")
        prompts = encode_prompts(teacher, texts, groups, progress) if texts else None
        vocab = prompts.class_weights() if prompts is not None else None  # held-out scoring's classes [C, d]
        prompts = prompts if needs_prompts else None
        embed_seconds = time.perf_counter() - t0
        checkpoints = run.checkpoints(dims=[src[0].dim, tch[0].dim],  # every source's and teacher's data
                                      data=[f.manifest["fingerprint"] for f in src + tch])
        result = fit(cfg, src, tch, prompts, run.path, progress, checkpoints, vocabulary=vocab)
        if result.history:
            plot_history(result.history, run.path / "loss.png", title=f"{cfg.method}: {cfg.encoder} -> {cfg.teacher}")
        options = train_config(cfg)
        config = {
            "teacher": cfg.teacher, "encoder": cfg.encoder,
            "dims": {"encoder": src[0].dim, "teacher": tch[0].dim}, "bridge": result.bridge.config(),
            "method": cfg.method, "losses": weights,
            "pgkd": cfg.pgkd if "pgkd" in weights else None, "tau": cfg.tau if "pgkd" in weights else None,
            "train": None if options is None else {**asdict(options[0]), "batch_size": options[1]},
            "ridge": cfg.ridge if result.ridge is None else result.ridge, "paired": cfg.paired,
            "views": {"count": cfg.views, "recipe": None if cfg.views == 1 else recipe.canonical()},
            "holdout": result.selection,
            "data": [_data_entry(data, used, cfg.views, result.splits[k] if result.splits else None)
                     for k, (data, used) in enumerate(zip(source_data, result.used[0]))],
            "unpaired_data": None if cfg.paired else _data_entry(teacher_data[0], result.used[1][0], cfg.views),
            "prompts": None if not needs_prompts else {
                "file": cfg.prompts, "templates": None if cfg.prompts else list(DEFAULT_TEMPLATES),
                "count": len(texts), "classes": groups,
                "sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest()},
            "seconds": {"embed": round(embed_seconds, 2), "fit": round(result.seconds, 2)},
        }
        state = {f"bridge.{k}": v.detach().cpu().contiguous() for k, v in result.bridge.state_dict().items()}
        return run.finish(config, state, lambda config, records: model_card(config, result.history, records),
                          progress, command="transfer", rows=max(result.rows), history=result.history,
                          teacher=teacher)


# ---------------------------------------------------------------- model card
def _fit_images(config: dict) -> str:
    """The card's fit images: per source, the images fitted of its images (and views); then the held out."""
    entries, held = data_entries(config), config.get("holdout")
    parts = []
    for data in entries:
        views = data.get("views", 1)
        used = data["rows_used"] // views if views > 1 else data["rows_used"]
        if held:  # a run before several --data: one source, whose fit images the split records
            used = data.get("images_fit", held["images"]["fit"] if len(entries) == 1 else used)
        text = f"`{data['spec']}`: {used} of {data['rows']} images"
        if views > 1:
            text += f" x {views} views ({data['rows_used']} rows; `{config['views']['recipe']}`)"
        parts.append(text)
    text = "; ".join(parts)
    if held:
        text += f", {held['images']['held']} more held out to choose by"
    return text


def model_card(config: dict, history: list[dict], records: list[dict] | None = None) -> str:
    """README.md of a bridge run: what it is, how it was made, its results and how to use it."""
    o = config["options"]
    losses = ", ".join(f"{k} x {w:g}" for k, w in config["losses"].items()) or "none (closed form)"
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
        f"| fit images | {_fit_images(config)}, no labels or captions |",
    ]
    lines += card_lines(config)
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
                     f"final loss {[r for r in history if 'loss' in r][-1]['loss']:.4g} |")
    lines.append(f"| fit time | {config['seconds']['fit']} s (features: {config['seconds']['embed']} s) |")
    lines += card_tail(o["out"], records, [f"zeroshift eval --model run:{o['out']} --data fashion-mnist:test"],
                       "`config.json` (every option), `model.safetensors` (the bridge), `metrics.jsonl` and "
                       "`loss.png` (training curve; none for the closed form).")
    return "\n".join(lines)
