"""What the benchmarks share: scoring a model's image features against the teacher's on an eval set."""
from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F

import zeroshift
from zeroshift.data.templates import get_templates
from zeroshift.report import wilson_interval
from zeroshift.zeroshot.classifier import zeroshot_weights
from zeroshift.zeroshot.metrics import caption_groups, retrieval_metrics


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



def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
