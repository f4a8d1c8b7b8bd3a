"""What the benchmarks share: timing (timed, in_turns, CallTimer), writing results (write_results, with the
machine, load and date), and scoring a model's image features against the teacher's on an eval set."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import zeroshift
from zeroshift.data.templates import get_templates
from zeroshift.errors import ZeroshiftError
from zeroshift.io import write_text
from zeroshift.report import wilson_interval
from zeroshift.zeroshot.classifier import check_classnames, zeroshot_weights
from zeroshift.zeroshot.metrics import caption_groups, retrieval_metrics

STARTED = datetime.datetime.now(datetime.UTC), os.getloadavg()[0]  # at import: when the benchmark started


@contextlib.contextmanager
def zeroshift_home(path: str | os.PathLike) -> Iterator[Path]:
    """$ZEROSHIFT_HOME set to `path` inside the block (caches, runs, data), restored on the way out."""
    before = os.environ.get("ZEROSHIFT_HOME")
    os.environ["ZEROSHIFT_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        if before is None:
            os.environ.pop("ZEROSHIFT_HOME", None)
        else:
            os.environ["ZEROSHIFT_HOME"] = before


# ---------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call (time.perf_counter) and what the last call returned."""

    seconds: list[float]
    result: Any = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def total(self) -> float:
        return sum(self.seconds)


def _call(fn: Callable, sync: Callable[[], None] | None, setup: Callable[[], Any] | None) -> tuple[float, Any]:
    """Seconds of one call of fn (given setup()'s result, made before the clock starts) and its result."""
    args = () if setup is None else (setup(),)
    if sync:
        sync()
    t0 = time.perf_counter()
    result = fn(*args)
    if sync:
        sync()  # a device's queued work belongs to the call
    return time.perf_counter() - t0, result


def in_turns(fns: Mapping[str, Callable], repeats: int = 1, warmup: int = 0, sync: Callable[[], None] | None = None,
             setup: Callable[[], Any] | None = None) -> dict[str, Timing]:
    """Each function called once per turn, all in turns (so load on the machine hits them alike): `warmup`
    untimed turns, then `repeats` timed ones. `sync` (torch.cuda.synchronize) runs around each timed call;
    `setup`, when given, makes each call's argument outside the clock."""
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for turn in range(warmup + repeats):
        for name, fn in fns.items():
            s, results[name] = _call(fn, sync, setup)
            if turn >= warmup:
                seconds[name].append(s)
    return {name: Timing(seconds[name], results.get(name)) for name in fns}


def timed(fn: Callable, repeats: int = 1, warmup: int = 0, sync: Callable[[], None] | None = None,
          setup: Callable[[], Any] | None = None) -> Timing:
    """`repeats` timed calls of fn after `warmup` untimed ones (in_turns of one function)."""
    return in_turns({"fn": fn}, repeats, warmup, sync, setup)["fn"]


class CallTimer:
    """Within `with`, `module.name` is wrapped to add each call's seconds to `self.seconds` (restored on exit):
    the time a part takes inside a bigger timed step."""

    def __init__(self, module: Any, name: str, sync: Callable[[], None] | None = None) -> None:
        self.module, self.name, self.sync, self.seconds = module, name, sync, []

    def __enter__(self) -> CallTimer:  # noqa: PYI034
        self.original = getattr(self.module, self.name)

        def wrapped(*args, **kwargs):
            seconds, out = _call(lambda: self.original(*args, **kwargs), self.sync, None)
            self.seconds.append(seconds)
            return out

        setattr(self.module, self.name, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.original)


# ---------------------------------------------------------------- results
def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def conditions() -> dict[str, Any]:
    """The machine, the 1-min load average when the benchmark started and now, and its start date (UTC)."""
    return {"machine": machine(), "load_avg_1min": [STARTED[1], os.getloadavg()[0]],
            "date": STARTED[0].isoformat(timespec="seconds")}


def write_results(out: str | os.PathLike, name: str, text: str, result: dict, footer: bool = True) -> Path:
    """OUT/NAME.md (`text`, and with `footer` a last line giving the machine, load and date) and OUT/NAME.json
    (`result` with conditions() where it has none of its own), each written atomically; the markdown is also
    printed. Returns the json's path."""
    folder = Path(out)
    payload = {**conditions(), **result}
    if footer:
        load = payload["load_avg_1min"]
        text += (f"\nRun on {payload['machine']}, {payload['date'].replace('T', ' ')}; 1-min load average "
                 f"{load[0]:.1f} at the start, {load[-1]:.1f} at the end.\n")
    write_text(folder / f"{name}.md", text)
    path = write_text(folder / f"{name}.json", json.dumps(payload, indent=2, default=str) + "\n")  # NaN kept as NaN
    print(text, end="")
    return path


# ---------------------------------------------------------------- scoring against a teacher
def features(model, spec: str) -> zeroshift.cache.Features:
    return zeroshift.embed(model, spec, progress=False)


class EvalSet:
    """One evaluation set: teacher features, class weights, teacher predictions, captions."""

    def __init__(self, teacher, spec: str, vocab_weights: torch.Tensor) -> None:
        self.spec, self.source = spec, zeroshift.dataset(spec)
        tf = features(teacher, spec)
        self.index = tf.index
        self.t = torch.from_numpy(tf.numpy())  # [N, d]
        self.labels = torch.from_numpy(tf.labels)
        self.classes = tf.classes
        self.weights = zeroshot_weights(teacher, self.classes, get_templates(None, spec))  # [C, d]
        self.vocab = vocab_weights  # [1000, d]
        self.t_pred, self.t_vocab = self.predict(self.t)
        self.captions = tf.captions
        self.texts = None
        if self.captions:
            texts, self.positives = caption_groups(self.captions)
            self.texts = F.normalize(teacher.encode_text(texts).float(), dim=-1)  # [T, d]

    def predict(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(z, dim=-1)
        return (z @ self.weights.T).argmax(1), (z @ self.vocab.T).argmax(1)

    def retrieval(self, z: torch.Tensor) -> dict:
        if self.texts is None:
            return {}
        return retrieval_metrics(self.texts @ F.normalize(z, dim=-1).T, self.positives)

    def score(self, z: torch.Tensor) -> dict:
        pred, vocab = self.predict(z)
        acc = float((pred == self.labels).float().mean())
        lo, hi = wilson_interval(acc, len(pred))
        out = {"acc1": acc, "acc1_lo": lo, "acc1_hi": hi, "chance": 1 / len(self.classes),
               "agree": float((pred == self.t_pred).float().mean()),
               "agree_vocab": float((vocab == self.t_vocab).float().mean()),
               "cosine": float(F.cosine_similarity(z, self.t, dim=-1).mean())}
        r = self.retrieval(z)
        if r:
            out["R@1"], out["R@5"] = r["image_retrieval_recall@1"], r["image_retrieval_recall@5"]
        return out


# ---------------------------------------------------------------- VLMs made of frozen towers and heads
def zero_shot(z: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, texts: torch.Tensor | None = None,
              positives: torch.Tensor | None = None) -> dict:
    """Accuracy (chance, Wilson 95% interval) of image embeddings z [N, d] against class weights [C, d], and
    caption recall@1/5 both ways against caption embeddings texts [T, d] (positives [T, N])."""
    pred = (F.normalize(z.float(), dim=-1) @ F.normalize(weights.float(), dim=-1).T).argmax(1)  # [N]
    acc = float((pred == labels).float().mean())
    lo, hi = wilson_interval(acc, len(pred))
    out = {"acc1": acc, "acc1_lo": lo, "acc1_hi": hi, "chance": 1 / len(weights), "n": len(pred)}
    if texts is not None:
        r = retrieval_metrics(F.normalize(texts.float(), dim=-1) @ F.normalize(z.float(), dim=-1).T, positives)
        out.update({"i2t_R@1": r["text_retrieval_recall@1"], "i2t_R@5": r["text_retrieval_recall@5"],
                    "t2i_R@1": r["image_retrieval_recall@1"], "t2i_R@5": r["image_retrieval_recall@5"],
                    "captions": len(texts)})
    return out


def vlm_scores(vlm, spec: str) -> dict:
    """zero_shot() of any VLM on an eval set: its cached image features, class prompts and captions."""
    f = features(vlm, spec)
    weights = zeroshot_weights(vlm, f.classes, get_templates(None, spec))  # [C, d]
    texts, positives = caption_groups(f.captions) if f.captions else (None, None)
    return zero_shot(f.torch(), torch.from_numpy(f.labels), weights,
                     None if texts is None else vlm.encode_text(texts), positives)


class TowerEvalSet:
    """One eval set for VLMs that share frozen towers and differ in their heads (aligned VLMs): the towers'
    features of the images, class prompts and captions are computed once; each VLM's heads map them."""

    def __init__(self, image_tower, text_tower, spec: str, batch_size: int = 256) -> None:
        self.spec, self.source = spec, zeroshift.dataset(spec)
        f = features(image_tower, spec)
        self.index, self.classes = f.index, check_classnames(f.classes)
        self.x = f.torch()  # [N, fi] backbone features
        self.labels = torch.from_numpy(f.labels)  # [N]
        self.templates = get_templates(None, spec)
        prompts = [t.format(c=c) for c in self.classes for t in self.templates]  # class-major, C * P

        def encode(texts: list[str]) -> torch.Tensor:  # [len(texts), ft]
            with torch.no_grad():
                return torch.cat([text_tower.encode_text(texts[s:s + batch_size]).float()
                                  for s in range(0, len(texts), batch_size)])

        self.prompts = encode(prompts)  # [C * P, ft]
        self.texts, self.positives, self.caption_x = None, None, None
        if f.captions:
            self.texts, self.positives = caption_groups(f.captions)  # T distinct captions, [T, N]
            self.caption_x = encode(self.texts)  # [T, ft]

    def embed(self, vlm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(images [N, d], class weights [C, d], captions [T, d] or None) in the VLM's joint space."""
        with torch.no_grad():
            z = vlm.image_head(self.x).float()  # [N, d]
            p = F.normalize(vlm.text_head(self.prompts).float(), dim=-1)  # [C * P, d]
            w = F.normalize(p.view(len(self.classes), len(self.templates), -1).mean(1), dim=-1)  # [C, d]
            t = None if self.caption_x is None else vlm.text_head(self.caption_x).float()  # [T, d]
        return z, w, t

    def score(self, vlm) -> dict:
        """zero_shot() of a VLM whose towers are this set's, through its image_head and text_head."""
        z, w, t = self.embed(vlm)
        return zero_shot(z, self.labels, w, t, self.positives)

    def check(self, vlm, n: int = 4) -> dict:
        """Largest differences between the head-on-cache path and vlm.encode_image / zeroshot_weights /
        vlm.encode_text on the first n images, the class weights and n captions; ZeroshiftError if they differ."""
        z, w, t = self.embed(vlm)
        images = torch.stack([vlm.image_transform(self.source.load_image(int(i))) for i in self.index[:n]])  # [n, 3, H, W]
        diffs = {"image": float((vlm.encode_image(images) - z[:n]).abs().max()),
                 "class_weights": float((zeroshot_weights(vlm, self.classes, self.templates) - w).abs().max())}
        if t is not None:
            diffs["captions"] = float((vlm.encode_text(self.texts[:n]) - t[:n]).abs().max())
        if max(diffs.values()) > 1e-3 * max(float(z[:n].abs().max()), 1.0):
            raise ZeroshiftError(
                f"{self.spec}: cached features through the heads differ from {vlm.spec}'s own encoders by "
                f"{max(diffs.values()):.2g}; delete the effnet feature cache and rerun")
        return diffs


def agreement_plot(rows: list[dict], evals: list[str], labels: list[str], path) -> None:
    """Horizontal bars per row and eval set: agreement with the teacher and accuracy, chance as a line
    (rows[0] is the teacher, whose chance level is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(evals), figsize=(12, 0.3 * len(rows) + 1.5), sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, e in zip(axes, evals):
        ax.barh(y + 0.2, [r[e]["agree"] for r in rows], height=0.4, label="agreement with teacher", color="#4c72b0")
        ax.barh(y - 0.2, [r[e]["acc1"] for r in rows], height=0.4, label="accuracy", color="#dd8452")
        ax.axvline(rows[0][e]["chance"], color="#c44e52", lw=1, label="chance")
        ax.set_title(e, fontsize=9)
        ax.set_xlim(0, 1)
    axes[0].set_yticks(y, labels, fontsize=6 if len(rows) > 20 else 7)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
