"""Models named by other specs: the two parts of `conse:`, a student around a backbone spec, one tower
of a VLM spec, the text side alone of a VLM spec. These sit above models/ and beside the registry, so
that models/ never reaches back up into specs.py to resolve a spec of its own."""
from __future__ import annotations

import importlib

from .errors import SpecError
from .models.conse import LOGIT_SCHEMES, ConSEImage, class_embeddings, imagenet_classes
from .models.student import Student, check_encoder
from .models.vlm import ImageEncoder, TextEncoder, TextSide, TowersVLM
from .specs import MODEL_SCHEMES, build, check_backend, load, parse, require

STUDENT_EXAMPLES = "student-cnn:s|m|l, student-vit:s|m|l, timm:NAME@random, effnet-lite0, effnet-lite2:blocks=11,size=64"
# How each VLM scheme builds its text side without its image side ("module:function", imported when
# used, as the registry's targets are); a VLM scheme missing here is built whole and its text side kept.
TEXT_SIDES = {
    "openclip": "zeroshift.models.openclip:create_text",
    "hf-clip": "zeroshift.models.hfclip:create_text",
    "tiny-clip": "zeroshift.models.tiny:create_text",
    "conse": "zeroshift.compose:conse_text",
    "run": "zeroshift.runs:load_run_text",
}


def _conse_parts(arg: str) -> tuple[str, str]:
    """(image spec, text spec) of `conse:IMAGE+TEXT`, the image part checked to name a classifier scheme."""
    image_spec, sep, text_spec = (part.strip() for part in arg.rpartition("+"))
    if not sep or not image_spec or not text_spec:
        raise SpecError(f"conse: needs IMAGE+TEXT, e.g. conse:effnet-lite2+minilm; got {arg!r}")
    scheme, _ = parse(image_spec, MODEL_SCHEMES)
    if scheme.name not in LOGIT_SCHEMES:
        raise SpecError(f"conse: the image part must be an ImageNet classifier ({', '.join(LOGIT_SCHEMES)}); "
                        f"got {image_spec!r}")
    return image_spec, text_spec


def _conse_text(text_spec: str) -> TextEncoder:
    text = build(text_spec, MODEL_SCHEMES)
    if not isinstance(text, TextEncoder):
        raise SpecError(f"conse: the text part must be a text encoder (minilm, st:...); got {text_spec!r}")
    return text


def conse(arg: str) -> TowersVLM:
    """A ConSE VLM from `IMAGE+TEXT`, e.g. conse:effnet-lite2+minilm (see models/conse.py)."""
    image_spec, text_spec = _conse_parts(arg)
    logits = build(image_spec, MODEL_SCHEMES, output="logits")
    text = _conse_text(text_spec)
    names = imagenet_classes()
    if logits.dim != len(names):
        raise SpecError(f"conse: {image_spec} gives {logits.dim} classes, not the {len(names)} of ImageNet-1k")
    spec = f"conse:{image_spec}+{text_spec}"
    image = ConSEImage(logits, class_embeddings(text.eval(), names), spec + "/image")
    return TowersVLM(image, text, spec=spec).eval()


def build_student(spec: str, dim: int) -> Student:
    """The student for image spec `spec` with a fresh head into a `dim`-d joint space; SpecError when
    the spec names no trainable encoder or one whose output cannot be projected."""
    require(spec, "image", "student", examples=STUDENT_EXAMPLES)
    encoder = load(spec, runtime="torch")
    check_encoder(encoder, dim)
    return Student(encoder, dim)


def tower(spec: str, side: str, runtime: str = "torch", name: str | None = None) -> ImageEncoder | TextEncoder:
    """The image or text tower a spec names: an encoder of that kind, or that side of a VLM. A spec of
    another kind is refused before loading, as `name` (how the user gave it, e.g. '--text')."""
    scheme, _ = parse(spec, MODEL_SCHEMES)
    require(spec, (side, "vlm"), f"{side} tower", name)
    want = ImageEncoder if side == "image" else TextEncoder
    if scheme.kind == "vlm" and side == "text":
        model = getattr(text_side(spec), "text", None)  # the VLM's text tower, its image side never built
    else:
        model = load(spec, runtime=runtime if side == "image" else "torch")
    if scheme.kind == "vlm" and side == "image":
        model = getattr(model, side, None)
    if not isinstance(model, want):
        raise SpecError(f"{spec} gives no {side} tower: use a {side} encoder spec, or a VLM whose {side} side is "
                        f"a separate tower (e.g. tiny-clip:)")
    return model


def conse_text(arg: str) -> TextSide:
    """The text side of `conse:IMAGE+TEXT`: the text encoder alone (the classifier is never built)."""
    image_spec, text_spec = _conse_parts(arg)
    text = _conse_text(text_spec)
    return TextSide(text, None, f"conse:{image_spec}+{text_spec}", text.dim).eval()


def text_side(spec: str) -> TextEncoder:
    """What a VLM spec's encode_text computes, as a TextEncoder that holds no image tower (a bridged or
    distilled VLM's teacher): built by the scheme's text-only constructor (TEXT_SIDES), else the whole VLM
    is built and only its text side kept. The embeddings are bit-identical to the whole VLM's."""
    scheme, arg = parse(spec, MODEL_SCHEMES)
    if scheme.kind != "vlm":
        raise SpecError(f"{spec} is a {scheme.kind} spec, not a VLM: a teacher must be a VLM "
                        "(e.g. conse:effnet-lite2+minilm, openclip:..., a run: folder)")
    target = TEXT_SIDES.get(scheme.name)
    if target is None:
        return load(spec, runtime="torch").text_side().eval()
    check_backend(scheme)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(arg).eval()
