"""timm:NAME[@random|@/path/weights][#logits][?size=N]: a timm model's pooled features (or its logits).

NAME is any timm architecture, optionally with a pretrained tag (`resnet50.a1_in1k`). Without @ the
pretrained weights are fetched from the hub; `@random` keeps random weights; `@/path` loads a local
file through timm's own loader. Preprocessing is timm's data config for the model; `?size=N` crops
N x N instead of the model's own input size (a student at random init trained on small images:
`timm:mobilenetv3_small_100@random?size=96`; a convolutional network takes any size).
"""
from __future__ import annotations


from ..errors import MissingWeights, SpecError, fetch_failed
from . import hub
from .vlm import ModuleEncoder
from ..paths import user_path

OUTPUTS = ("features", "logits")
SIZES = (16, 1024)  # the ?size= a spec may ask for, inclusive


def split_size(arg: str) -> tuple[str, int | None]:
    """Strip a trailing `?size=N` from `arg`: (the rest, N or None); SpecError for any other option."""
    head, sep, query = arg.partition("?")
    if not sep:
        return arg, None
    key, _, value = query.partition("=")
    if key != "size" or not value.isdigit() or not SIZES[0] <= int(value) <= SIZES[1]:
        raise SpecError(f"timm: the one option is ?size=N (input side, {SIZES[0]} to {SIZES[1]}), "
                        f"e.g. timm:resnet18@random?size=96; got ?{query}")
    return head, int(value)


def split_output(arg: str, output: str | None) -> tuple[str, str]:
    """Strip a trailing `#features` / `#logits` from `arg`; the keyword `output` must agree with it."""
    head, sep, tail = arg.rpartition("#")
    if sep and tail in OUTPUTS:
        if output is not None and output != tail:
            raise SpecError(f"spec asks for #{tail} but output={output!r}")
        return head, tail
    output = output or "features"
    if output not in OUTPUTS:
        raise SpecError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    return arg, output


def create(arg: str, output: str | None = None) -> ModuleEncoder:
    """Build a timm image encoder from `NAME[@random|@/path][#logits][?size=N]`."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    arg, size = split_size(arg)
    arg, output = split_output(arg, output)
    name, sep, tag = arg.partition("@")
    if not name or not timm.is_model(name):
        raise SpecError(f"unknown timm model {name!r}; see timm.list_models()")
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as e:
        raise SpecError(f"timm:{name}: {e}") from e
    if not sep and not (cfg and (cfg.url or cfg.hf_hub_id or cfg.file)):  # timm would go on with random weights
        raise SpecError(f"timm lists no pretrained weights for {name}: give timm:{name}@/path/to/weights "
                        f"or timm:{name}@random")
    heads = {} if output == "logits" else {"num_classes": 0}
    if sep and tag == "random":
        model, suffix = timm.create_model(name, pretrained=False, **heads), "@random"
    elif sep:
        file = user_path(tag)
        if not file.is_file():
            raise MissingWeights(f"no weights file at {tag} for timm:{name}")
        file = file.resolve()
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **heads)
        suffix = f"@{file}"
    else:
        instead = f"timm:{name}@/path/to/weights.safetensors (or @random for random weights)"
        if cfg.hf_hub_id:  # through huggingface_hub: fails at once, quietly, without a network (hub.py)
            with hub.fetching(f"timm:{name}", instead, (OSError, RuntimeError)):
                model, suffix = timm.create_model(name, pretrained=True, **heads), ""
        else:
            try:
                model, suffix = timm.create_model(name, pretrained=True, **heads), ""
            except (OSError, RuntimeError) as e:
                raise fetch_failed(f"timm:{name}", "a local file: " + instead, e) from e
    model.eval()
    data_config = resolve_data_config(model=model)
    if size is not None:
        data_config["input_size"] = (3, size, size)
    transform = create_transform(**data_config, is_training=False)
    if output == "logits":
        dim = int(model.num_classes)
    else:
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    spec = f"timm:{name}{suffix}" + ("#logits" if output == "logits" else "") + (f"?size={size}" if size else "")
    return ModuleEncoder(model, dim, transform, spec).eval()
