"""The options of `zeroshift shrink` and its candidate specs; free of torch, so --help and every check that
needs no model or data answer at once.

A candidate is `METHOD:SPEC`: `transfer:ENCODER` (a Zoom-shot bridge from a pretrained encoder into the
teacher's space) or `distill:STUDENT` (a student trained on the teacher's image embeddings). Each trains
with its method's defaults; `--transfer` and `--distill` override some of them (`epochs=4,views=1`).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields

from ..choices import RUNTIMES
from ..errors import ZeroshiftError
from ..paths import slug

METHODS = ("transfer", "distill")
NONE = "none"  # --candidates none: the teacher alone (its table row and evaluations), nothing exported
# Default candidates, each kept when its backend is installed: two pretrained encoders of the offline
# catalogue bridged, the built-in student, and a student started from EfficientNet-Lite2's first 11
# pretrained blocks (7% of its parameters; it beat the built-in student in bench/results/teaching-trunk).
TRUNK_STUDENT = "distill:effnet-lite2:blocks=11,size=64"
DEFAULT_CANDIDATES = ("transfer:effnet-lite0", "transfer:open-nsfw", "distill:student-cnn", TRUNK_STUDENT)
# What shrink itself sets for every candidate: not overridable through --transfer / --distill.
OWNED = {"teacher", "encoder", "student", "data", "out", "eval_data", "seed", "runtime", "device", "quiet",
         "overwrite", "resume", "keep_checkpoints", "checkpoint_every"}


@dataclass(frozen=True)
class Candidate:
    """One candidate: the method that makes it and the encoder or student spec it starts from."""

    method: str  # "transfer" | "distill"
    spec: str

    @property
    def name(self) -> str:
        return f"{self.method}:{self.spec}"

    @property
    def folder(self) -> str:
        return slug(self.name, 120)


def parse_candidate(text: str) -> Candidate:
    """'transfer:effnet-lite0' -> Candidate('transfer', 'effnet-lite0'); one-line error otherwise."""
    method, sep, spec = text.strip().partition(":")
    if not sep or method not in METHODS or not spec.strip():
        raise ZeroshiftError(f"candidate {text!r}: write METHOD:SPEC with METHOD one of {', '.join(METHODS)}, e.g. "
                             "transfer:effnet-lite0 or distill:student-cnn")
    return Candidate(method, spec.strip())


def parse_overrides(text: str, cls: type, option: str) -> dict[str, typing.Any]:
    """'epochs=4,views=1' -> {'epochs': 4, 'views': 1}, each a field of `cls` converted to its type."""
    if not text.strip():
        return {}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)} - OWNED
    out: dict[str, typing.Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ZeroshiftError(f"{option} {item.strip()!r}: write NAME=VALUE,... with NAME an option of "
                                 f"{cls.__name__} that shrink does not set itself ({', '.join(sorted(known))})")
        out[key] = _convert(value.strip(), hints[key], f"{option} {key}")
    return out


def _convert(value: str, hint: typing.Any, what: str) -> typing.Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is not None else hint
    if typing.get_origin(base) is tuple:
        return tuple(value.split("+"))  # a tuple option: values joined by +
    if value.casefold() == "none" and type(None) in typing.get_args(hint):
        return None
    try:
        if base is bool:
            if value.casefold() not in ("true", "false", "on", "off", "1", "0"):
                raise ValueError(value)
            return value.casefold() in ("true", "on", "1")
        return base(value) if base in (int, float) else value
    except ValueError:
        raise ZeroshiftError(f"{what} takes a {getattr(base, '__name__', base)}; got {value!r}") from None


@dataclass(frozen=True, kw_only=True)
class ShrinkConfig:
    """The options of `zeroshift shrink`."""

    teacher: str = field(metadata={"help": "the VLM whose answers the cheap model must keep"})
    data: tuple[str, ...] = field(metadata={
        "help": "one or more data specs of your unlabelled images (each split into fit and held-out images on its "
                "own; labels are read only to report accuracy)"})
    labels: str = field(metadata={"help": "your labels: 'a,b,c' or a label file, one per line"})
    out: str = field(metadata={"help": "folder for the table, plot, candidates and the chosen export"})
    candidates: tuple[str, ...] = field(default=(), metadata={
        "help": "METHOD:SPEC candidates, e.g. transfer:effnet-lite0 distill:student-cnn, or none (default: "
                + " ".join(DEFAULT_CANDIDATES) + ", those installed)"})
    budget_ms: float | None = field(default=None, metadata={
        "help": "the most milliseconds per image at batch 1 on --threads threads the shipped export may take"})
    budget_params: float | None = field(default=None, metadata={
        "help": "the most parameters one image's forward pass may read, e.g. 2e6"})
    holdout: float = field(default=0.2, metadata={
        "help": "share of the images held out by image (seeded): every candidate is scored on them, none trains"})
    threads: int = field(default=1, metadata={"help": "threads each export is timed on"})
    int8: bool = field(default=True, metadata={"help": "also export and time int8 (kept when it agrees with float)"})
    eval_data: tuple[str, ...] = field(default=(), metadata={
        "help": "labelled data specs every candidate and the teacher are also evaluated on zero-shot (acc1)"})
    templates: str | None = field(default=None, metadata={"help": "prompt template set or file for your labels"})
    transfer: str = field(default="", metadata={"help": "transfer options for every bridge, NAME=VALUE,..."})
    distill: str = field(default="", metadata={"help": "distill options for every student, NAME=VALUE,..."})
    seed: int = field(default=0, metadata={"help": "seed of the split and of every candidate"})
    runtime: str = field(default="auto", metadata={"help": "how frozen image towers run", "choices": list(RUNTIMES)})
    device: str = field(default="auto", metadata={"help": "training device: auto, cpu, cuda, cuda:N"})
    overwrite: bool = field(default=False, metadata={"help": "start over: drop the finished candidates in --out"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars; stage lines and the summary are printed"})

    def __post_init__(self) -> None:
        for name in ("data", "candidates", "eval_data"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
        if not self.data:
            raise ZeroshiftError("--data needs at least one data spec of your images")
        if self.candidates != (NONE,):
            for c in self.candidates:
                parse_candidate(c)
        if len(set(self.candidates)) != len(self.candidates):
            raise ZeroshiftError("--candidates lists a candidate twice")
        if not 0 < self.holdout < 1:
            raise ZeroshiftError(f"--holdout is the share of images held out, in (0, 1); got {self.holdout:g}")
        if self.threads < 1:
            raise ZeroshiftError(f"--threads must be at least 1; got {self.threads}")
        for name in ("budget_ms", "budget_params"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ZeroshiftError(f"--{name.replace('_', '-')} must be above 0; got {value:g}")
        if self.runtime not in RUNTIMES:
            raise ZeroshiftError(f"unknown runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        from ..methods.config import DistillConfig, TransferConfig  # torch-free

        parse_overrides(self.transfer, TransferConfig, "--transfer")
        parse_overrides(self.distill, DistillConfig, "--distill")


__all__ = ["Candidate", "DEFAULT_CANDIDATES", "METHODS", "TRUNK_STUDENT", "ShrinkConfig", "parse_candidate",
           "parse_overrides"]
