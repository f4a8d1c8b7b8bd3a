"""Prompt templates for zero-shot classifiers, and the ImageNet class names as a generic vocabulary.

Template sets are data files in `templates/` (`{"name", "source", "templates": [...]}`), keyed by the
dataset they were written for; every template holds `{c}`, filled with `template.format(c=name)` as
CLIP_benchmark does. A user file is a `.txt` (one template per line) or a `.json` list; `{}` (the
open_clip/NLLB convention) is read as `{c}`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..errors import ZeroshiftError
from ..paths import user_path

_DIR = Path(__file__).with_name("templates")

# Datasets that use another dataset's set. CLIP_benchmark has no Fashion-MNIST set and falls back to
# ImageNet's 80 templates for any dataset it has none for; we do the same for Fashion-MNIST.
ALIASES = {
    "imagenet1k": "imagenet",
    "imagenet-1k": "imagenet",
    "fashion-mnist": "imagenet",
    "fashionmnist": "imagenet",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
}

# Data schemes whose argument starts with the dataset's own name (hf:cifar10:test, torchvision:MNIST).
_NAMED_SCHEMES = ("hf", "torchvision")


def template_sets() -> list[str]:
    """Names of the packaged template sets."""
    return sorted(p.stem for p in _DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _packaged(name: str) -> tuple[str, ...]:
    with open(_DIR / f"{name}.json", encoding="utf-8") as f:
        return tuple(json.load(f)["templates"])


def dataset_key(dataset: str) -> str:
    """The base name a data spec's templates are keyed by: 'fashion-mnist:test' -> 'fashion-mnist',
    'hf:uoft-cs/cifar10:test' -> 'cifar10', 'torchvision:CIFAR10' -> 'cifar10'."""
    scheme, _, rest = dataset.strip().partition(":")
    name = rest.partition(":")[0].rstrip("/").rpartition("/")[2] if scheme in _NAMED_SCHEMES else scheme
    return name.casefold().replace("_", "-")


def _set_for(key: str) -> str | None:
    key = ALIASES.get(key, key)
    return key if key in template_sets() else None


def _check(templates: list[str], where: str) -> list[str]:
    """Templates with '{}' read as '{c}'; each must hold '{c}' and format cleanly."""
    out = []
    for n, raw in enumerate(templates, 1):
        if not isinstance(raw, str):
            raise ZeroshiftError(f"{where}: template {n} is not a string: {raw!r}")
        t = raw.strip().replace("{}", "{c}")
        if not t:
            continue
        try:
            ok = "{c}" in t and t.format(c="x") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ZeroshiftError(
                f"{where}: template {n} {raw!r} must contain '{{c}}' where the class name goes "
                "(and no other braces)"
            )
        out.append(t)
    if not out:
        raise ZeroshiftError(f"{where} holds no templates; give at least one line such as 'a photo of a {{c}}.'")
    return out


def read_template_file(path: str | Path, dataset: str | None = None) -> list[str]:
    """Templates from a .txt file (one per line) or a .json file: a list, `{"templates": [...]}`, or
    CLIP_benchmark's custom-template form `{dataset_name: [...]}` (looked up by the dataset's base name)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ZeroshiftError(f"cannot read template file {path}: {e}") from None
    if path.suffix.lower() != ".json":
        return _check(text.splitlines(), f"template file {path}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ZeroshiftError(f"template file {path} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        if "templates" in data:
            data = data["templates"]
        else:
            key = dataset_key(dataset) if dataset else None
            if key not in data:
                raise ZeroshiftError(
                    f"template file {path} is keyed by dataset ({', '.join(sorted(map(str, data))[:8])}) "
                    f"but has no entry for {key!r}"
                )
            data = data[key]
    if not isinstance(data, list):
        raise ZeroshiftError(f"template file {path} must hold a JSON list of template strings")
    return _check(data, f"template file {path}")


def get_templates(name_or_file: str | None = None, dataset: str | None = None) -> list[str]:
    """Templates by set name ('imagenet', 'cifar10', 'default', ...) or file path; with None, the set keyed
    by the dataset spec's base name ('fashion-mnist:test' -> its set), else 'default'."""
    if name_or_file is None:
        key = _set_for(dataset_key(dataset)) if dataset else None
        return list(_packaged(key or "default"))
    key = _set_for(name_or_file.strip().casefold())
    if key is not None:
        return list(_packaged(key))
    path = user_path(name_or_file)
    if path.is_file():
        return read_template_file(path, dataset)
    raise ZeroshiftError(
        f"templates {name_or_file!r} is neither a template set ({', '.join(template_sets())}) "
        "nor an existing .txt/.json file"
    )


# torchvision's 1000 ImageNet names hold one pair that differs only by case: 'Cardigan' (the corgi,
# index 264) and 'cardigan' (the sweater, 474). As prompts they must differ, so the dog gets its
# WordNet synonym.
_IMAGENET_RENAMES = {264: "Cardigan Welsh corgi"}


@lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    for i, name in _IMAGENET_RENAMES.items():
        names[i] = name
    return tuple(names)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names (torchvision's weight metadata, in class-index order), made
    distinct under case folding so they can serve as one zero-shot label set."""
    return list(_imagenet())
