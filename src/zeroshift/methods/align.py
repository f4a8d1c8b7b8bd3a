"""`align` (OTTER): a new VLM from a pretrained image tower and a pretrained sentence encoder (DESIGN 3.3).

Wu et al. (ICLR 2022), "Data Efficient Language-supervised Zero-shot Recognition with Optimal
Transport Distillation": projection heads map both towers into a joint space and are trained
contrastively on noisy image-text pairs; OTTER replaces InfoNCE's one-hot targets by soft labels.
Logits are `clamp(exp(theta), 1, 100) * cos(image, text)`, theta0 = 3.9. Targets per batch (rows i
pair), image->text; text->image solves the transposed problem:
- `infonce`: the identity.
- `ls`: label smoothing, `alpha` on the diagonal, the rest spread evenly.
- `kd`: `alpha I + (1 - alpha) softmax(-C / kd_temperature)` (rows).
- `ot` (default): `alpha I + (1 - alpha) M*`, M* the entropic OT plan (Sinkhorn, lambda, a few
  iterations, log domain) for C = -(S_vv + S_tt + S_vt), diagonals of S_vv and S_tt pushed down; over
  the global batch under torchrun (see sinkhorn.py).
C comes from a teacher: S_vt from an EMA of the heads (decay `ema`); S_vv and S_tt from the EMA heads
too (`similarity ema`, OTTER) or from the frozen backbone features (`similarity backbone`, default:
by hand an EMA of freshly initialised heads is noise for the first thousand steps, DESIGN 3.3).

`locked` mode trains the heads on cached features (seconds per epoch on a CPU); `finetune` mode also
trains the last `finetune_blocks` blocks of both towers, on decoded images and tokenised captions.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import embed
from ..compose import tower
from ..data.base import DataSource
from ..errors import DataError, ZeroshiftError
from ..models.aligned import Heads, trainable_blocks
from ..models.pixels import PixelRows, pixel_pipeline
from ..models.vlm import VLM
from ..report import card_tail
from ..train import plot_history, train
from ..train.batches import Epoch
from ..zeroshot.prompts import encode_prompts
from .common import Run
from .config import MODES, SIMILARITIES, AlignConfig  # noqa: F401  (AlignConfig, MODES, SIMILARITIES: re-exported)
from .config import ALIGN_LOSSES as LOSSES  # noqa: F401  (re-exported)
from .losses import AlignLoss

# ---------------------------------------------------------------- the task
def align_loss(cfg: AlignConfig) -> AlignLoss:
    """The loss module of `cfg`'s contrastive targets."""
    return AlignLoss(cfg.loss, cfg.alpha, cfg.lam, cfg.sinkhorn_iters, cfg.kd_temperature)


def soft_targets(cfg: AlignConfig, n: int, device: torch.device, teacher: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image->text, text->image) targets [n, n] of `cfg`'s loss; `teacher` = (img, txt, img_ref, txt_ref)."""
    return align_loss(cfg).targets(n, device, teacher)


class AlignTask(nn.Module):
    """One step: embed both sides (features, or towers with their last blocks trained), project, and
    score the symmetric cross-entropy against the loss's soft targets; the EMA heads follow each step."""

    def __init__(self, cfg: AlignConfig, heads: Heads, image_fn: Callable | None = None,
                 text_fn: Callable | None = None, towers: nn.ModuleList | None = None) -> None:
        super().__init__()
        self.cfg, self.heads = cfg, heads
        self.loss = align_loss(cfg)
        self.teacher = copy.deepcopy(heads).requires_grad_(False)  # EMA of the heads
        self.towers = towers  # finetune: the towers whose last blocks train (registered, so checkpointed)
        self.image_fn, self.text_fn = image_fn, text_fn  # finetune: batch -> backbone features with grads
        self.step_index = 0

    def train(self, mode: bool = True) -> AlignTask:
        super().train(mode)
        if self.towers is not None:
            self.towers.eval()  # frozen BatchNorm statistics and no dropout in the pretrained towers
        return self

    def step(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Under torchrun both sides are gathered (with gradients) so that each rank scores its own rows
        against the global batch; DDP's gradient average then equals one process at the global batch."""
        self.step_index += 1
        fi = self.image_fn(batch) if self.image_fn else batch["image"]  # [B, fi] backbone features
        ft = self.text_fn(batch) if self.text_fn else batch["text"]  # [B, ft]
        zi, zt = F.normalize(self.heads.image(fi), dim=-1), F.normalize(self.heads.text(ft), dim=-1)  # [B, d]
        teacher = None
        if self.cfg.loss in ("ot", "kd"):
            with torch.no_grad():
                ei, et = self.teacher.image(fi.detach()), self.teacher.text(ft.detach())  # [B, d] EMA embeddings
                ri, rt = (fi.detach(), ft.detach()) if self.cfg.similarity == "backbone" else (ei, et)
                teacher = (ei, et, ri, rt)
        scale = self.heads.scale()
        try:
            terms = self.loss(zi, zt, scale, teacher)
        except ZeroshiftError as e:
            raise ZeroshiftError(f"step {self.step_index}: {e}") from None
        return terms, {"logit_scale": scale.item()}

    @torch.no_grad()
    def after_step(self) -> None:
        """Move the EMA heads toward the trained ones."""
        for e, p in zip(self.teacher.parameters(), self.heads.parameters()):
            e.lerp_(p.detach(), 1 - self.cfg.ema)


# ---------------------------------------------------------------- pairs
@dataclass
class Pairs:
    """Usable pairs over the sources: each row's source, source row, caption, and (locked) features."""

    sources: list[DataSource]
    part: np.ndarray  # [N] which source
    row: np.ndarray  # [N] row in that source
    captions: list[str]  # [N] after the noise option
    skipped: dict[str, int]
    noisy: int


def collect_pairs(sources: list[DataSource], noise: float, seed: int) -> Pairs:
    """Rows with a usable caption (empty ones and ones that are not valid UTF-8 are skipped and counted);
    with `noise`, that fraction of captions is replaced by the captions of other random pairs."""
    part, row, captions, skipped = [], [], [], {"no caption": 0, "empty caption": 0, "caption not UTF-8": 0}
    for k, source in enumerate(sources):
        if source.captions is None:
            raise DataError(f"{source.spec!r} has no captions; align needs image-caption pairs (csv: with a "
                            "caption column, wds: with .txt, tuxpaint, openclipart)")
        for r, caption in enumerate(source.captions):
            text = (caption or "").strip()
            if not text:
                skipped["empty caption"] += 1
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes kept as surrogates by the readers
                skipped["caption not UTF-8"] += 1
                continue
            part.append(k)
            row.append(r)
            captions.append(text)
    if len(captions) < 2:
        raise DataError(f"{len(captions)} usable image-caption pair(s) in {', '.join(s.spec for s in sources)}; "
                        "align needs at least 2")
    rng = np.random.default_rng([seed, 7])
    k = round(noise * len(captions))
    chosen = rng.choice(len(captions), k, replace=False) if k else np.zeros(0, np.int64)
    donors = rng.integers(0, len(captions), k)
    original = list(captions)
    for i, j in zip(chosen, donors):
        captions[i] = original[j]
    return Pairs(sources, np.array(part), np.array(row), captions, {k: v for k, v in skipped.items() if v}, k)


class Rows:
    """Training rows: per pair, an index into the image side and one into the unique caption list."""

    def __init__(self, image: torch.Tensor | None, text: torch.Tensor | None, image_index: np.ndarray,
                 caption_ids: np.ndarray, pixels=None) -> None:
        self.image, self.text, self.pixels = image, text, pixels  # locked: [U, fi], [T, ft]; finetune: pixel rows
        self.image_index, self.caption_ids = image_index, caption_ids
        self.captions: list[str] = []

    def __len__(self) -> int:
        return len(self.image_index)

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Epoch]:
        """Epochs of batches {caption [B], image [B, fi], text [B, ft]} (locked) or {caption, pixels} (finetune)."""

        def make(rows: np.ndarray, g: torch.Generator) -> dict:
            batch: dict = {"caption": torch.from_numpy(self.caption_ids[rows])}
            if self.image is not None:
                batch["image"] = self.image[self.image_index[rows]]  # [B, fi]
                batch["text"] = self.text[self.caption_ids[rows]]  # [B, ft]
            else:
                batch["pixels"] = self.pixels(self.image_index[rows])  # [B, 3, H, W]
            return batch

        return lambda epoch: Epoch(len(self), batch_size, seed, epoch, make)  # a last batch of one is kept


def _image_positions(feats, part_rows: np.ndarray) -> np.ndarray:
    """Positions of source rows `part_rows` among a cache's valid rows; -1 where the image was bad."""
    pos = np.searchsorted(feats.index, part_rows)
    pos = np.clip(pos, 0, max(len(feats.index) - 1, 0))
    ok = (len(feats.index) > 0) & (feats.index[pos] == part_rows) if len(feats.index) else np.zeros(len(part_rows), bool)
    return np.where(ok, pos, -1)


def build_rows(cfg: AlignConfig, pairs: Pairs, image_tower, text_tower, progress: bool) -> tuple[Rows, Callable | None]:
    """Locked: image features [U, fi] and caption features [T, ft] in memory. Finetune: a pixel cache
    read per batch, and the function finishing its pixels. Pairs whose image is bad are dropped, counted."""
    unique = list(dict.fromkeys(pairs.captions))
    lookup = {c: i for i, c in enumerate(unique)}
    caption_ids = np.array([lookup[c] for c in pairs.captions], dtype=np.int64)
    finish, encoder = None, image_tower
    if cfg.mode == "finetune":
        encoder, finish = pixel_pipeline(image_tower.image_transform)
    caches, positions = [], np.full(len(caption_ids), -1, dtype=np.int64)
    offsets = []
    for k, source in enumerate(pairs.sources):
        opts = ({"runtime": cfg.runtime} if cfg.mode == "locked"
                else {"runtime": "torch", "dtype": encoder.dtype, "shard_rows": 1024})
        feats = embed(encoder, source, progress=progress, role="image tower" if cfg.mode == "locked" else "pixels",
                      **opts)
        sel = pairs.part == k
        pos = _image_positions(feats, pairs.row[sel])
        positions[sel] = np.where(pos >= 0, pos + sum(len(c) for c in caches), -1)
        offsets.append(sum(len(c) for c in caches))
        caches.append(feats)
    keep = positions >= 0
    pairs.skipped.update({"image missing or corrupt": int((~keep).sum())} if (~keep).any() else {})
    if keep.sum() < 2:
        raise DataError(f"{int(keep.sum())} pair(s) left with a readable image; align needs at least 2")
    if cfg.mode == "locked":
        image = torch.cat([torch.from_numpy(c.numpy()) for c in caches])  # [U, fi]
        text = encode_prompts(text_tower, unique, len(unique), progress).embeddings  # [T, ft]
        rows = Rows(image, text, positions[keep], caption_ids[keep])
    else:
        pixels = PixelRows(caches, encoder.shape)  # global cache positions -> [B, 3, H, W]
        rows = Rows(None, None, positions[keep], caption_ids[keep], pixels=pixels)
    rows.captions = unique
    return rows, finish


def _finetune_parts(cfg: AlignConfig, image_tower, text_tower, rows: Rows, finish) -> tuple[nn.ModuleList, Callable, Callable, dict]:
    """Freeze both towers but their last `finetune_blocks` blocks; the functions computing features with grads."""
    trained = {}
    for side, model in (("image", image_tower), ("text", text_tower)):
        names = set(trainable_blocks(model, cfg.finetune_blocks))
        for name, p in model.named_parameters():
            p.requires_grad_(name in names)
        trained[side] = sorted(names)
        if not names:
            raise ZeroshiftError(f"the {side} tower {getattr(model, 'spec', '')} has no parameters to finetune; "
                                 "use --mode locked")

    def image_fn(batch: dict) -> torch.Tensor:
        return image_tower(finish(batch["pixels"])).float()  # [B, fi]

    def text_fn(batch: dict) -> torch.Tensor:
        return text_tower([rows.captions[i] for i in batch["caption"].tolist()]).float()  # [B, ft]

    return nn.ModuleList([image_tower, text_tower]), image_fn, text_fn, trained


def align(cfg: AlignConfig, progress: bool = True) -> VLM:
    """Train projection heads (and, in finetune mode, the towers' last blocks) on image-caption pairs
    and write the run folder (config.json, model.safetensors, README.md, metrics.jsonl, loss.png);
    returns it loaded as a VLM. Checkpoints go to OUT.ckpt; a rerun after a kill resumes there. With
    `cfg.eval_data`, the run is evaluated as `zeroshift eval --model run:OUT` would (records in OUT/results)."""
    from ..specs import dataset, require

    progress = progress and not cfg.quiet
    require(cfg.image, ("image", "vlm"), "image tower", "--image")  # by the specs' kinds, before any work
    require(cfg.text, ("text", "vlm"), "text tower", "--text")
    run = Run(cfg, "aligned", {"image": cfg.image, "text": cfg.text, "loss": cfg.loss})
    sources = [dataset(spec) for spec in cfg.data]
    entries = [{"spec": s.spec, "fingerprint": s.fingerprint(), "rows": len(s)} for s in sources]  # hashed once
    pairs = collect_pairs(sources, cfg.noise, cfg.seed)
    with run:
        finetune = cfg.mode == "finetune"
        image_tower = tower(cfg.image, "image", "torch" if finetune else cfg.runtime, "--image")
        text_tower = tower(cfg.text, "text", name="--text")
        t0 = time.perf_counter()
        rows, finish = build_rows(cfg, pairs, image_tower, text_tower, progress)
        prepare_seconds = time.perf_counter() - t0
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            heads = Heads(image_tower.dim, text_tower.dim, cfg.dim)
        towers, image_fn, text_fn, trained = None, None, None, {}
        if finetune:
            towers, image_fn, text_fn, trained = _finetune_parts(cfg, image_tower, text_tower, rows, finish)
        task = AlignTask(cfg, heads, image_fn, text_fn, towers)
        checkpoints = run.checkpoints(data=[e["fingerprint"] for e in entries], rows=len(rows),
                                      dims=[image_tower.dim, text_tower.dim])
        t1 = time.perf_counter()
        batches = rows.batches(cfg.batch_size, cfg.seed)
        history = train(task, batches, cfg.train_config(), run.path, progress, checkpoints)
        train_seconds = time.perf_counter() - t1
        plot_history(history, run.path / "loss.png", title=f"align {cfg.loss}: {cfg.image} + {cfg.text}")
        config = {
            "image": cfg.image, "text": cfg.text,
            "dims": {"image": image_tower.dim, "text": text_tower.dim, "joint": cfg.dim}, "mode": cfg.mode,
            "finetuned": trained,
            "loss": {"name": cfg.loss, "alpha": cfg.alpha, "lam": cfg.lam, "sinkhorn_iters": cfg.sinkhorn_iters,
                     "kd_temperature": cfg.kd_temperature, "ema": cfg.ema, "similarity": cfg.similarity},
            "logit_scale": heads.scale().item(),
            "pairs": entries,
            "rows": len(rows), "captions": len(rows.captions), "noise": {"fraction": cfg.noise, "replaced": pairs.noisy},
            "skipped": pairs.skipped,
            "train": {**asdict(cfg.train_config()), "batch_size": cfg.batch_size, "steps": len(batches(0)) * cfg.epochs},
            "seconds": {"prepare": round(prepare_seconds, 2), "train": round(train_seconds, 2)},
        }
        state = {f"heads.{k}": v for k, v in heads.state_dict().items()}
        for side, model in (("image", image_tower), ("text", text_tower)):
            params = dict(model.named_parameters())
            state.update({f"{side}.{name}": params[name] for name in trained.get(side, [])})
        return run.finish(config, state, lambda config, records: model_card(config, history, records), progress,
                          command="align", rows=len(rows), history=history)  # no teacher: set beside chance


# ---------------------------------------------------------------- model card
def model_card(config: dict, history: list[dict], records: list[dict] | None = None) -> str:
    """README.md of an aligned VLM: what it is, how it was made, its results and how to use it."""
    o, t, loss = config["options"], config["train"], config["loss"]
    detail = {"infonce": "", "ls": f"alpha {loss['alpha']}",
              "kd": f"alpha {loss['alpha']}, temperature {loss['kd_temperature']}, EMA {loss['ema']}",
              "ot": (f"alpha {loss['alpha']}, lambda {loss['lam']}, {loss['sinkhorn_iters']} Sinkhorn iterations, "
                     f"EMA {loss['ema']}, S_vv/S_tt from the {loss['similarity']}")}[loss["name"]]
    pairs = "; ".join(f"`{p['spec']}`" for p in config["pairs"])
    skipped = ", ".join(f"{v} {k}" for k, v in config["skipped"].items()) or "none"
    lines = [
        f"# zeroshift aligned VLM: {config['image']} + {config['text']}", "",
        (f"A vision-language model made from the image tower `{config['image']}` and the text tower "
         f"`{config['text']}`, each projected into a shared {config['dims']['joint']}-d space and trained on "
         f"image-caption pairs with OTTER's recipe (`zeroshift align`, zeroshift {config['zeroshift_version']})."), "",
        "| | |", "|---|---|",
        f"| towers | `{config['image']}` ({config['dims']['image']}-d), `{config['text']}` ({config['dims']['text']}-d) |",
        f"| mode | {config['mode']}" + (f" (last blocks: {sum(len(v) for v in config['finetuned'].values())} tensors)"
                                       if config["finetuned"] else "") + " |",
        f"| loss | {loss['name']}{' (' + detail + ')' if detail else ''} |",
        f"| pairs | {pairs}: {config['rows']} used, {config['captions']} distinct captions; skipped: {skipped} |",
        f"| caption noise | {config['noise']['fraction']:g} ({config['noise']['replaced']} replaced) |",
        (f"| training | {t['epochs']} epochs, {t['steps']} steps, AdamW lr {t['lr']:g}, batch {t['batch_size']}, "
         f"final logit scale {config['logit_scale']:.1f}, {config['seconds']['train']} s |"),
    ]
    lines += card_tail(o["out"], records, [
        f"zeroshift transfer --teacher run:{o['out']} --encoder effnet-lite0 --data ... --out bridge",
        f"zeroshift distill --teacher run:{o['out']} --data ... --out student"],
        "`config.json` (every option), `model.safetensors` (heads and any finetuned blocks), `metrics.jsonl`, "
        "`loss.png`.")
    return "\n".join(lines)
