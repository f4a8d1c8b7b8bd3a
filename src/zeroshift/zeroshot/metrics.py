"""Zero-shot metrics, defined as CLIP_benchmark defines them (so numbers compare across tools).

- acc1, acc5: top-k accuracy over all rows, k clipped to the number of classes (CLIP_benchmark writes
  NaN for acc5 below 5 classes; we clip, so acc5 is 1.0 there and never NaN in a JSON record).
- mean_per_class_recall: sklearn's balanced accuracy, the mean recall over classes present in the targets.
- flat_hit@k: fraction of rows whose true label is among the top-k (DeViSE/OTTER), for large label sets.
- image_retrieval_recall@k (text -> image) and text_retrieval_recall@k (image -> text): a query scores 1
  when any of its positives is in its top k, averaged over queries.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

FLAT_HIT_KS = (1, 2, 5, 10)
RECALL_KS = (1, 5, 10)
LARGE_LABEL_SET = 100  # classes from which flat_hit@k is reported too


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x


def topk_hits(logits, targets, k: int) -> torch.Tensor:
    """Per row: 1.0 when the target is among the top-k logits (k clipped to the class count)."""
    logits, targets = _tensor(logits), _tensor(targets).long()
    k = min(k, logits.shape[1])
    pred = logits.topk(k, dim=1, largest=True, sorted=True).indices  # [N, k]
    return (pred == targets[:, None]).any(dim=1).float()  # [N]


def _fraction(hits: torch.Tensor) -> float:
    return hits.sum().item() / len(hits)  # counted, then divided in float64


def accuracy(logits, targets, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies of logits [N, C] against targets [N], one per k."""
    return [_fraction(topk_hits(logits, targets, k)) for k in topk]


def mean_per_class_recall(preds, targets) -> float:
    """Mean over the classes present in `targets` of the recall on that class (balanced accuracy)."""
    preds, targets = _tensor(preds).long(), _tensor(targets).long()
    recalls = [_fraction(preds[targets == c] == c) for c in targets.unique().tolist()]
    return float(np.mean(recalls))


def flat_hit(logits, targets, ks: Iterable[int] = FLAT_HIT_KS) -> dict[str, float]:
    """Flat-Hit@k: {"flat_hit@k": fraction with the true label in the top k}."""
    return {f"flat_hit@{k}": _fraction(topk_hits(logits, targets, k)) for k in ks}


def classification_metrics(logits, targets) -> dict[str, float]:
    """CLIP_benchmark's classification metrics, plus Flat-Hit@k from LARGE_LABEL_SET classes."""
    logits, targets = _tensor(logits).float(), _tensor(targets).long()
    acc1, acc5 = accuracy(logits, targets, (1, 5))
    metrics = {
        "acc1": acc1,
        "acc5": acc5,
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), targets),
    }
    if logits.shape[1] >= LARGE_LABEL_SET:
        metrics.update(flat_hit(logits, targets))
    return metrics


def caption_groups(captions: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct captions and positives [T, N]: text t is positive for image i when caption i is text t.

    One caption per image, but identical captions are one text (several positive images), so a
    duplicate caption is neither a second query nor a competitor of itself.
    """
    texts = list(dict.fromkeys(captions))
    index = {t: j for j, t in enumerate(texts)}
    positives = torch.zeros(len(texts), len(captions), dtype=torch.bool)  # [T, N]
    positives[[index[c] for c in captions], torch.arange(len(captions))] = True
    return texts, positives


def _recall(scores: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # [Q, k]
    return _fraction(positives.gather(1, top).any(dim=1))


def retrieval_metrics(scores, positives, ks: Iterable[int] = RECALL_KS) -> dict[str, float]:
    """Recall@k both ways from scores [T, N] (texts x images) and positives [T, N]."""
    scores, positives = _tensor(scores).float(), _tensor(positives).bool()
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _recall(scores, positives, k)
        metrics[f"text_retrieval_recall@{k}"] = _recall(scores.T, positives.T, k)
    return metrics
