"""Zero-shot evaluation of any VLM on any data source, with image features from the feature cache.

Classification needs class names and labels; retrieval needs captions. `task="auto"` runs each one
the source supports and writes one CLIP_benchmark record per task (see records.py).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import embed
from ..data.base import DataSource
from ..data.templates import get_templates
from ..errors import DataError, ZeroshiftError
from ..models.runtime import runtime_used
from ..models.vlm import VLM
from ..paths import output_folder
from ..report import RESULTS_HEADING, card_results
from ..runfolder import read_config, recorded_weights, replace_card_section
from ..specs import dataset as open_dataset
from ..specs import load, require
from ..version import __version__
from .classifier import check_classnames, classify, zeroshot_weights
from .metrics import caption_groups, classification_metrics, retrieval_metrics
from .records import TASKS, make_record, read_records, write_record

TEXT_BATCH = 256
SHOWN_SKIPS = 10  # skipped rows named in a record (all of them are in the feature cache's manifest)


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
    vlm: VLM, feats, image: torch.Tensor, classes: list[str], templates: list[str], progress: bool, spec: str,
) -> tuple[dict, dict]:
    labels = torch.as_tensor(np.asarray(feats.labels, dtype=np.int64))  # [N]
    keep = labels >= 0
    if not keep.any():
        raise DataError("no labelled rows left to classify (every image was skipped or unlabelled)")
    present = labels[keep].unique().tolist()
    if len(present) < len(classes):  # e.g. a slice of a sorted dataset: a constant guess scores high
        names = ", ".join(classes[i] for i in present[:5]) + (", ..." if len(present) > 5 else "")
        warnings.warn(f"the {int(keep.sum())} scored rows of {spec} hold only {len(present)} of its "
                      f"{len(classes)} classes ({names}): accuracy on them says little about telling the "
                      "classes apart; evaluate on rows that cover every class", UserWarning, stacklevel=3)
    weights = zeroshot_weights(vlm, classes, templates, progress=progress)  # [C, d]
    logits = classify(image[keep], weights)  # [n, C]
    metrics = classification_metrics(logits, labels[keep])
    return metrics, {"evaluated": int(keep.sum()), "unlabelled": int((~keep).sum()), "classes_scored": len(present)}


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
    out: str | Path | None = None,
    batch_size: int = 64,
    runtime: str = "auto",
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate `model` zero-shot on `dataset`; returns {task: record}. Files are written only with an
    output folder `out`: each record to `out/` as CLIP_benchmark does and, when the model is a run
    folder, into RUN/results too, with the Results section of RUN/README.md listing them all.

    `templates` is a set name or a file (None: the set keyed by the dataset, else 'default'); image
    features come from the feature cache, so a second evaluation does not re-encode the images.
    `runtime` ('torch', 'onnx', 'auto') picks how the image tower of a model given as a spec runs; a
    model given as an object runs as it is. A record's `zeroshift` entry holds the rows scored and
    skipped (the first few skipped by name) and the runtime the image tower ran on.
    """
    require(model, "vlm", "model", command="eval")  # before opening the data or loading anything
    folder = None if out is None else output_folder(out, "out")  # before any work
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
    skipped = [str(s.get("key", s.get("row"))) if isinstance(s, dict) else str(s)
               for s in (feats.manifest.get("skipped") or [])]
    details = {"version": __version__, "spec": vlm.spec, "data_fingerprint": source.fingerprint(),
               "rows": len(source), "skipped": len(source) - int(image.shape[0]),
               "skipped_keys": skipped[:SHOWN_SKIPS], "runtime": runtime_used(vlm)}
    records = {}
    for t in tasks:
        if t == "zeroshot_classification":
            metrics, info = _classification(vlm, feats, image, classes, prompts, progress, source.spec)
            extra = {"classnames": classes, "templates": prompts}
        else:
            metrics, info = _retrieval(vlm, feats, image)
            extra = {}
        record = make_record(source.spec, vlm.spec, t, metrics, **extra, zeroshift={**details, **info})
        if folder is not None:
            write_record(record, folder)
        records[t] = record
    if folder is not None:
        _update_run(vlm, records, folder)
    return records


def _update_run(vlm: VLM, records: dict[str, dict], out: Path) -> None:
    """A run folder evaluated: its records go into RUN/results too, and its card lists every record there."""
    run = getattr(vlm, "run_folder", None)
    if run is None:
        return
    run = Path(run)
    want = vlm.spec.rpartition("@")[2] if vlm.spec.startswith("run:") and "@" in vlm.spec else ""
    try:
        if not recorded_weights(run, read_config(run)).startswith(want):
            warnings.warn(f"{run} was retrained since {vlm.spec} was loaded; its model card is left as it is")
            return
        results = run / "results"
        if out.resolve() != results.resolve():
            for record in records.values():
                write_record(record, results)
        replace_card_section(run, RESULTS_HEADING, card_results(str(run), read_records(results)))
    except (OSError, ZeroshiftError) as e:  # the evaluation stands; only the card could not follow
        warnings.warn(f"could not update the model card of {run}: {str(e).splitlines()[0]}")
