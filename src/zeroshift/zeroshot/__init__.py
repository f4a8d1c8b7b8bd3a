"""Zero-shot classifiers, metrics and CLIP_benchmark-format evaluation records.

Evaluation lives in `zeroshift.zeroshot.evaluate` (`from zeroshift.zeroshot.evaluate import evaluate`),
kept out of this namespace so importing a classifier does not import the feature cache.
"""
from __future__ import annotations

from .classifier import check_classnames, classify, zeroshot_weights
from .metrics import accuracy, classification_metrics, flat_hit, mean_per_class_recall, retrieval_metrics
from .records import make_record, read_records, write_record

__all__ = [
    "zeroshot_weights", "classify", "check_classnames", "accuracy", "mean_per_class_recall", "flat_hit",
    "classification_metrics", "retrieval_metrics", "make_record", "write_record", "read_records",
]
