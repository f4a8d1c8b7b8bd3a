"""The trainable parts of an aligned VLM (OTTER) and the loader of `align` run folders.

An aligned VLM is a pretrained image tower and a pretrained text tower, each followed by a linear
projection head into a joint space of size `dim`. In `locked` mode only the heads (and the logit
scale) are trained; in `finetune` mode the last blocks of both towers are too, and the run stores
those blocks' weights beside the heads. Towers are referenced by spec and rebuilt when loading.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CacheError, CacheMismatch, SpecError
from .artefact import load_part
from .vlm import VLM, ImageEncoder, TextEncoder, TowersVLM

THETA0 = 3.9  # initial log logit scale (exp 3.9 ~ 49), clamped to [1, 100] as OTTER and CLIP do


class Heads(nn.Module):
    """Projection heads image [N, fi] -> [N, d], text [M, ft] -> [M, d], and the learnable logit scale."""

    def __init__(self, image_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.theta = nn.Parameter(torch.tensor(THETA0))
        self.dims = (image_dim, text_dim, dim)

    def scale(self) -> torch.Tensor:
        return self.theta.exp().clamp(1.0, 100.0)


def tower(spec: str, side: str, runtime: str = "torch") -> ImageEncoder | TextEncoder:
    """The image or text tower a spec names: an encoder of that kind, or that side of a VLM."""
    from ..specs import MODEL_SCHEMES, load, parse

    scheme, _ = parse(spec, MODEL_SCHEMES)
    want = ImageEncoder if side == "image" else TextEncoder
    model = load(spec, runtime=runtime if side == "image" else "torch")
    if scheme.kind == "vlm":
        model = getattr(model, side, None)
    if not isinstance(model, want):
        raise SpecError(f"{spec} gives no {side} tower: use a {side} encoder spec, or a VLM whose {side} side is "
                        f"a separate tower (e.g. tiny-clip:, conse: has no separable image tower)")
    return model


def trainable_blocks(module: nn.Module, n: int) -> list[str]:
    """Names of the parameters in the last `n` blocks of `module` and everything after them: the blocks
    are the children with parameters of its longest Sequential/ModuleList (a transformer's layers, a
    CNN's stages)."""
    if n < 1:
        return []
    names = [name for name, _ in module.named_parameters()]
    best: list[str] = []
    for name, child in module.named_modules():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            blocks = [f"{name}.{i}." if name else f"{i}." for i, c in enumerate(child)
                      if any(True for _ in c.parameters())]
            if len(blocks) > len(best):
                best = blocks
    if not best:
        return names[-1:]
    starts = tuple(best[-n:])
    first = next((k for k, name in enumerate(names) if name.startswith(starts)), len(names))
    return names[first:]


def vlm_from_artefact(folder: Path, config: dict, state: dict[str, torch.Tensor], runtime: str) -> VLM:
    """An align run folder as a VLM: both towers rebuilt from their specs, their trained blocks (finetune)
    and the heads loaded from the run."""
    try:
        image_spec, text_spec = str(config["image"]), str(config["text"])
        image_dim, text_dim, dim = (int(config["dims"][k]) for k in ("image", "text", "joint"))
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{folder}: config.json lacks or mistypes {e} (image, text, dims.image/text/joint); "
                         "the run is damaged, retrain it") from None
    tuned = {side: {k[len(side) + 1:]: v for k, v in state.items() if k.startswith(side + ".")}
             for side in ("image", "text")}
    image = tower(image_spec, "image", "torch" if tuned["image"] else runtime)
    text = tower(text_spec, "text")
    for side, model, want in (("image", image, image_dim), ("text", text, text_dim)):
        if model.dim != want:
            raise CacheMismatch(f"{folder} was trained on a {want}-d {side} tower, but {config[side]!r} now gives "
                                f"{model.dim}-d; the spec resolves to another model")
        if tuned[side]:
            own = dict(model.named_parameters())
            wrong = [k for k, v in tuned[side].items() if k not in own or own[k].shape != v.shape]
            if wrong:
                raise CacheMismatch(f"{folder}: finetuned {side} weights do not fit {config[side]!r} "
                                    f"({', '.join(wrong[:3])}); the run is damaged or from another tower")
            with torch.no_grad():
                for k, v in tuned[side].items():
                    own[k].copy_(v)
            model.spec = f"{config['spec']}/{side}"  # caches keyed by spec must not reuse the pretrained tower's
    heads = Heads(image_dim, text_dim, dim)
    load_part(heads, state, "heads", folder, "from other towers; retrain it")
    if tuned["image"] and runtime != "torch":
        image = image.accelerated(runtime)
    return TowersVLM(image=image, text=text, spec=config["spec"], image_head=heads.image.eval(),
                     text_head=heads.text.eval(), dim=dim).eval()
