"""Zero-shot evaluation of any VLM on any data source, with image features from the feature cache.

Classification needs class names and labels; retrieval needs captions. `task="auto"` runs each one
the source supports and writes one CLIP_benchmark record per task (see records.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import embed
from ..data.base import DataSource
from ..data.templates import get_templates
from ..errors import DataError, ZeroshiftError
from ..models.vlm import VLM
from ..specs import dataset as open_dataset
from ..specs import load, require
from ..version import __version__
from .classifier import check_classnames, classify, zeroshot_weights
from .metrics import caption_groups, classification_metrics, retrieval_metrics
from .records import TASKS, make_record, write_record

TEXT_BATCH = 256


def _has_labels(source: DataSource) -> bool:
    return bool(source.classes) and source.labels is not None and bool((np.asarray(source.labels) >= 0).any())


def _has_captions(source: DataSource) -> bool:
    return source.captions is not None and any(c and c.strip() for c in source.captions)


def tasks_for(source: DataSource, task: str = "auto") -> list[str]:
    """The tasks to run: `task` itself (checked against the source), or for 'auto' every task it supports."""
    can = {"zeroshot_classification": _has_labels(source), "zeroshot_retrieval": _has_captions(source)}
    if task == "auto":
        tasks = [t for t in TASKS if can[t]]
        if not tasks:
            raise DataError(f"data source {source.spec!r} has neither class labels nor captions to evaluate against")
        return tasks
    if task not in can:
        raise ZeroshiftError(f"unknown task {task!r}; use auto, {', '.join(TASKS)}")
    if not can[task]:
        need = "class names and labels" if task == "zeroshot_classification" else "captions"
        raise DataError(f"{task} needs {need}, and data source {source.spec!r} has none")
    return [task]


def _classification(
    vlm: VLM, feats, image: torch.Tensor, classes: list[str], templates: list[str], progress: bool,
) -> tuple[dict, dict]:
    labels = torch.as_tensor(np.asarray(feats.labels, dtype=np.int64))  # [N]
    keep = labels >= 0
    if not keep.any():
        raise DataError("no labelled rows left to classify (every image was skipped or unlabelled)")
    weights = zeroshot_weights(vlm, classes, templates, progress=progress)  # [C, d]
    logits = classify(image[keep], weights)  # [n, C]
    metrics = classification_metrics(logits, labels[keep])
    return metrics, {"evaluated": int(keep.sum())}


def _retrieval(vlm: VLM, feats, image: torch.Tensor) -> tuple[dict, dict]:
    captions = [c.strip() if c else "" for c in feats.captions]
    keep = [i for i, c in enumerate(captions) if c]
    if len(keep) < 2:
        raise DataError("retrieval needs at least two captioned images")
    texts, positives = caption_groups([captions[i] for i in keep])  # positives [T, n]
    text = torch.cat([vlm.encode_text(texts[s:s + TEXT_BATCH]).float().cpu()
                      for s in range(0, len(texts), TEXT_BATCH)])  # [T, d]
    scores = F.normalize(text, dim=-1) @ F.normalize(image[keep], dim=-1).T  # [T, n]
    return retrieval_metrics(scores, positives), {"evaluated": len(keep), "texts": len(texts)}


def evaluate(
    model: VLM | str,
    dataset: DataSource | str,
    templates: str | None = None,
    task: str = "auto",
    out: str | Path | None = "results",
    batch_size: int = 64,
    runtime: str = "auto",
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate `model` zero-shot on `dataset`; returns {task: record} and, unless `out` is None, writes
    each record to `out/` as CLIP_benchmark does.

    `templates` is a set name or a file (None: the set keyed by the dataset, else 'default'); image
    features come from the feature cache, so a second evaluation does not re-encode the images.
    `runtime` ('torch', 'onnx', 'auto') picks how the image tower of a model given as a spec runs; a
    model given as an object runs as it is.
    """
    require(model, "vlm", "model", command="eval")  # before opening the data or loading anything
    source = dataset if isinstance(dataset, DataSource) else open_dataset(dataset)
    tasks = tasks_for(source, task)
    classify_too = "zeroshot_classification" in tasks  # check labels and templates before embedding
    classes = check_classnames(source.classes) if classify_too else []
    prompts = get_templates(templates, source.spec) if classify_too else []
    if isinstance(model, str):
        vlm = load(model, runtime=runtime, device="cuda" if torch.cuda.is_available() else "cpu")
    else:
        vlm = model
    feats = embed(vlm, source, batch_size=batch_size, runtime=runtime, progress=progress)
    image = torch.from_numpy(np.asarray(feats.numpy(), dtype=np.float32))  # [N_valid, d]
    details = {"version": __version__, "spec": vlm.spec, "data_fingerprint": source.fingerprint(),
               "rows": len(source), "skipped": len(source) - int(image.shape[0])}
    records = {}
    for t in tasks:
        if t == "zeroshot_classification":
            metrics, info = _classification(vlm, feats, image, classes, prompts, progress)
            extra = {"classnames": classes, "templates": prompts}
        else:
            metrics, info = _retrieval(vlm, feats, image)
            extra = {}
        record = make_record(source.spec, vlm.spec, t, metrics, **extra, zeroshift={**details, **info})
        if out is not None:
            write_record(record, out)
        records[t] = record
    return records
