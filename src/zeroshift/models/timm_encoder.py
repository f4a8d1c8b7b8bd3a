"""timm:NAME[@random|@/path/weights][#logits]: a timm model's pooled features (or its logits).

NAME is any timm architecture, optionally with a pretrained tag (`resnet50.a1_in1k`). Without @ the
pretrained weights are fetched from the hub; `@random` keeps random weights; `@/path` loads a local
file through timm's own loader. Preprocessing is timm's data config for the model.
"""
from __future__ import annotations


from ..errors import MissingWeights, SpecError, fetch_failed
from . import hub
from .vlm import ModuleEncoder
from ..paths import user_path

OUTPUTS = ("features", "logits")


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
    """Build a timm image encoder from `NAME[@random|@/path][#logits]`."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

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
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    if output == "logits":
        dim = int(model.num_classes)
    else:
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    spec = f"timm:{name}{suffix}" + ("#logits" if output == "logits" else "")
    return ModuleEncoder(model, dim, transform, spec).eval()
