"""Students for `distill`: small trainable image encoders and a linear head into a teacher's joint space.

    student-cnn:width=32,size=64,seed=0,depth=2   inverted-residual CNN, pooled [N, 12*width]
    student-vit:dim=128,depth=4,heads=4,mlp=1,patch=8,size=64,seed=0   pre-norm ViT, cls token [N, dim]

Size presets name a width and depth, and combine with explicit options, which win:
`student-cnn:l,size=96`. Parameters of the backbone (the head adds (features + 1) x the teacher's
dim) and multiply-adds per 64 px image (models/cost.py; attention included):

    student-cnn:s   width=20, depth=2                  0.10M    7.8M MACs   240-d
    student-cnn:m   width=32, depth=2 (the default)    0.25M   18.9M MACs   384-d
    student-cnn:l   width=64, depth=3                  1.48M    103M MACs   768-d
    student-vit:s   dim=64, depth=3, heads=2, mlp=2    0.12M    8.8M MACs    64-d
    student-vit:m   dim=128, depth=4, heads=4 (default) 0.43M   31.5M MACs   128-d
    student-vit:l   dim=192, depth=6, heads=3          1.39M    98.4M MACs   192-d

A built encoder's spec lists every option explicitly (`student-cnn:l` builds as
`student-cnn:width=64,size=64,seed=0,depth=3`), so a run that records it reloads identically even if
the presets change. Both are randomly initialised from the seed and preprocess like timm models trained
at `size` (resize to size/0.875, bicubic, centre crop, ImageNet normalisation). Any other trainable image
spec can be a student too (`timm:NAME@random`, `timm:NAME@random?size=96`, a pretrained catalogue encoder
such as `effnet-lite0`, which then trains all its weights): `compose.build_student` checks that it is.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from .transforms import probe_batch, resize_crop
from .vlm import ImageEncoder, ModuleEncoder

CNN_DEFAULTS = {"width": 32, "size": 64, "seed": 0, "depth": 2}
VIT_DEFAULTS = {"dim": 128, "depth": 4, "heads": 4, "mlp": 1, "patch": 8, "size": 64, "seed": 0}
# size presets: options over the defaults (see the module docstring for what each costs)
CNN_PRESETS = {"s": {"width": 20, "depth": 2}, "m": {"width": 32, "depth": 2}, "l": {"width": 64, "depth": 3}}
VIT_PRESETS = {"s": {"dim": 64, "depth": 3, "heads": 2, "mlp": 2}, "m": {"dim": 128, "depth": 4, "heads": 4, "mlp": 1},
               "l": {"dim": 192, "depth": 6, "heads": 3, "mlp": 1}}
EXPAND = 2  # hidden width of an inverted-residual block, as a multiple of its input width


HIGH = {"width": 1024, "size": 1024, "depth": 64, "dim": 4096, "heads": 64, "mlp": 16, "patch": 256}


def _options(scheme: str, arg: str, defaults: dict[str, int], presets: dict[str, dict[str, int]]) -> dict[str, int]:
    """Parse `[PRESET,]key=value,...` over `defaults`: a preset name (at most one, anywhere in the list)
    sets its options first, explicit integer options then win. Every value but the seed must be positive,
    and bounded (HIGH) so that a typo cannot ask for gigabytes."""
    opts = dict(defaults)
    items = [s.strip() for s in arg.split(",") if s.strip()]
    named = [item for item in items if "=" not in item]
    for item in named:
        if item not in presets or len(named) > 1:
            why = f"has no preset {item!r}" if item not in presets else f"takes one preset, got {', '.join(named)}"
            raise SpecError(f"{scheme} {why}: presets are {', '.join(presets)}, combined with options "
                            f"{', '.join(f'{k}=' for k in defaults)} (e.g. {scheme}:m,size=96)")
        opts.update(presets[item])
    for item in items:
        if "=" not in item:
            continue
        key, _, value = item.partition("=")
        if key not in opts or not value.isdigit() or (key != "seed" and int(value) < 1):
            raise SpecError(f"{scheme} options are {', '.join(f'{k}=' for k in defaults)} (positive integers); "
                            f"got {item!r}")
        if key in HIGH and int(value) > HIGH[key]:
            raise SpecError(f"{scheme} {key} must be at most {HIGH[key]}; got {item!r}")
        opts[key] = int(value)
    return opts


def _canonical(scheme: str, opts: dict[str, int]) -> str:
    return f"{scheme}:" + ",".join(f"{k}={v}" for k, v in opts.items())


# ---------------------------------------------------------------------------------------------- CNN

def _conv(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """conv (no bias) - BatchNorm - SiLU."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when expand == 1), 3x3 depthwise, linear 1x1 project;
    a residual connection where the shape allows."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers = [_conv(c_in, hidden)] if expand != 1 else []
        layers += [_conv(hidden, hidden, 3, stride, groups=hidden), _conv(hidden, c_out, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)  # [N, c_out, H / stride, W / stride]
        return x + y if self.residual else y


class StudentCNN(nn.Sequential):
    """[N, 3, S, S] -> [N, 12 * width]: a stride-2 stem, one depthwise-separable block at width, then
    three stages of `depth` inverted residuals (2, 3, 4 x width; each starts with stride 2), a 1x1
    conv to 12 x width and global average pooling. The total stride is 16."""

    def __init__(self, width: int, depth: int) -> None:
        layers: list[nn.Module] = [_conv(3, width, 3, 2), InvertedResidual(width, width, 1, 1)]
        c_in = width
        for mult in (2, 3, 4):
            for i in range(depth):
                layers.append(InvertedResidual(c_in, mult * width, 2 if i == 0 else 1, EXPAND))
                c_in = mult * width
        self.features = 12 * width
        layers += [_conv(c_in, self.features), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)


def create_cnn(arg: str = "") -> ModuleEncoder:
    """student-cnn from its option string (a preset s/m/l, width, size, seed, depth); random weights from the seed."""
    opts = _options("student-cnn", arg, CNN_DEFAULTS, CNN_PRESETS)
    if opts["size"] < 16:
        raise SpecError(f"student-cnn size must be at least 16 (the network downsamples 16x); got {opts['size']}")
    with torch.random.fork_rng():
        torch.manual_seed(opts["seed"])
        model = StudentCNN(opts["width"], opts["depth"])
    return ModuleEncoder(model, model.features, resize_crop(opts["size"]), _canonical("student-cnn", opts)).eval()


# ---------------------------------------------------------------------------------------------- ViT

class StudentViT(nn.Module):
    """[N, 3, S, S] -> [N, dim]: patch embedding, a cls token and learned position embeddings, `depth`
    pre-norm transformer blocks (GELU MLP of mlp x dim), a final LayerNorm; the cls token's output."""

    def __init__(self, dim: int, depth: int, heads: int, mlp: int, patch: int, size: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 1 + (size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)  # [N, P, dim]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # [N, 1 + P, dim]
        for block in self.blocks:
            x = block(x)  # [N, 1 + P, dim]
        return self.norm(x[:, 0])  # [N, dim]


def create_vit(arg: str = "") -> ModuleEncoder:
    """student-vit from its option string (a preset s/m/l, dim, depth, heads, mlp, patch, size, seed); random
    weights from the seed."""
    opts = _options("student-vit", arg, VIT_DEFAULTS, VIT_PRESETS)
    if opts["size"] % opts["patch"]:
        raise SpecError(f"student-vit size {opts['size']} is not a multiple of patch {opts['patch']}; "
                        "choose size = k x patch")
    if opts["dim"] % opts["heads"]:
        raise SpecError(f"student-vit dim {opts['dim']} is not divisible by heads {opts['heads']}; "
                        "choose dim = k x heads")
    with torch.random.fork_rng():
        torch.manual_seed(opts["seed"])
        model = StudentViT(opts["dim"], opts["depth"], opts["heads"], opts["mlp"], opts["patch"], opts["size"])
    return ModuleEncoder(model, opts["dim"], resize_crop(opts["size"]), _canonical("student-vit", opts)).eval()


# ---------------------------------------------------------------------------------------------- Student

def param_count(module: nn.Module) -> int:
    """Number of parameters (each shared tensor once); 0 for an encoder run outside PyTorch."""
    return sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0


def _check_trainable(encoder: object, spec: str) -> None:
    """SpecError unless `encoder` is a PyTorch image encoder with parameters that take gradients."""
    if getattr(encoder, "runs_onnx", False):
        why = "it runs in onnxruntime, which has no gradients"
    elif not isinstance(encoder, ImageEncoder):
        why = f"it is a {type(encoder).__name__}, not an image encoder"
    elif not any(p.requires_grad and p.is_floating_point() for p in encoder.parameters()):
        why = "it has no trainable PyTorch parameters"
    else:
        return
    raise SpecError(f"{spec} cannot be trained as a student: {why}; give a PyTorch image encoder such as "
                    "student-cnn:, student-vit: or timm:NAME@random")


def check_encoder(encoder: ImageEncoder, dim: int) -> None:
    """SpecError unless `encoder` can be a student backbone for a `dim`-d teacher: trainable, and giving
    one finite [N, encoder.dim] feature vector per image of its own transform."""
    spec = getattr(encoder, "spec", type(encoder).__name__)
    _check_trainable(encoder, spec)
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        batch = probe_batch(encoder.image_transform, 2).to(device)  # [2, 3, H, W]
        with torch.no_grad():
            out = encoder(batch)
    except Exception as e:  # noqa: BLE001 - any backend failure on a plain batch disqualifies it
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise SpecError(f"student {spec} fails on a probe batch of its own preprocessing: {reason}") from None
    finally:
        encoder.train(was_training)
    features = getattr(encoder, "dim", None)
    if not isinstance(out, torch.Tensor):
        got = f"a {type(out).__name__} as output"
    elif out.shape != (2, features):
        got = f"output of shape {tuple(out.shape)} (it declares dim {features})"
    elif not out.is_floating_point():
        got = f"{out.dtype} output"
    elif not bool(torch.isfinite(out).all()):
        got = "NaN or inf on probe images"
    else:
        return
    raise SpecError(f"student {spec} gives {got}; a student must give one floating feature vector per image "
                    f"to be projected into the teacher's {dim}-d space")


class Student(ImageEncoder):
    """A trainable backbone and a linear head: images [N, 3, H, W] -> [N, dim] in a teacher's joint space."""

    def __init__(self, encoder: ImageEncoder, dim: int, spec: str | None = None) -> None:
        super().__init__()
        _check_trainable(encoder, getattr(encoder, "spec", type(encoder).__name__))
        self.encoder, self.dim = encoder, int(dim)
        self.head = nn.Linear(encoder.dim, self.dim)
        self.image_transform = encoder.image_transform
        self.spec = spec or f"{encoder.spec}+head{self.dim}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))  # [N, dim]


def min_input(student: ImageEncoder) -> int:
    """The side of the square its image transform produces (the smaller side if not square)."""
    return int(min(probe_batch(student.image_transform, 1).shape[-2:]))


def architecture_spec(spec: str) -> str:
    """The spec that rebuilds `spec`'s architecture without fetching pretrained weights: hub backbones
    (timm:, torchvision:) become @random, keeping a timm `?size=`; built-in students and local catalogue
    weights (effnet-lite0, packaged: nothing to fetch) stay as they are."""
    from .timm_encoder import split_output, split_size

    spec = spec.strip()
    scheme, _, arg = spec.partition(":")
    if scheme not in ("timm", "torchvision"):
        return spec
    arg, size = split_size(arg) if scheme == "timm" else (arg, None)
    body, output = split_output(arg, None)
    name = body.partition("@")[0]
    return f"{scheme}:{name}@random" + ("#logits" if output == "logits" else "") + (f"?size={size}" if size else "")
