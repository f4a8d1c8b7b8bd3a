"""torchvision:NAME[@random|@/path/weights][#logits]: a torchvision classifier's pooled features.

Without @ the default weights are fetched (torchvision.models.get_model(weights="DEFAULT")); the
final classification layer is replaced by Identity, so the output is the layer's input (pooled
features). Preprocessing is the default weights' own transforms(), whatever the weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import MissingWeights, SpecError, fetch_failed
from .timm_encoder import split_output
from .vlm import ModuleEncoder
from ..paths import user_path


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch checkpoint (loaded with weights_only=True)."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def _classifier(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The last Linear layer with `num_classes` outputs: the classification head."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise SpecError(f"found no linear classifier with {num_classes} outputs to remove; use #logits")
    return heads[-1]


def create(arg: str, output: str | None = None) -> ModuleEncoder:
    """Build a torchvision image encoder from `NAME[@random|@/path][#logits]`."""
    from torchvision import models

    arg, output = split_output(arg, output)
    name, sep, tag = arg.partition("@")
    if name not in models.list_models(module=models):
        raise SpecError(f"unknown torchvision classification model {name!r}; "
                        "see torchvision.models.list_models(module=torchvision.models)")
    weights = models.get_model_weights(name).DEFAULT
    if sep and tag == "random":
        model, suffix = models.get_model(name, weights=None), "@random"
    elif sep:
        file = user_path(tag)
        if not file.is_file():
            raise MissingWeights(f"no weights file at {tag} for torchvision:{name}")
        file = file.resolve()
        model, suffix = models.get_model(name, weights=None), f"@{file}"
        model.load_state_dict(read_state_dict(file))
    else:
        try:
            model, suffix = models.get_model(name, weights="DEFAULT"), ""
        except (OSError, RuntimeError) as e:
            raise fetch_failed(f"torchvision:{name}", f"a local file: torchvision:{name}@/path/to/weights.pth "
                                                      "(or @random for random weights)", e) from e
    num_classes = len(weights.meta["categories"])
    head_name, head = _classifier(model, num_classes)
    if output == "logits":
        dim = num_classes
    else:
        model.set_submodule(head_name, nn.Identity())
        dim = head.in_features
    spec = f"torchvision:{name}{suffix}" + ("#logits" if output == "logits" else "")
    return ModuleEncoder(model.eval(), dim, weights.transforms(), spec).eval()
