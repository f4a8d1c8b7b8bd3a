"""Making one candidate: the default list from what is installed, each candidate's kind checked before any
work, and the method call (transfer or distill with its own defaults) on the fit part of the images."""
from __future__ import annotations

from pathlib import Path

from ..errors import MissingBackend, ZeroshiftError
from ..models.vlm import VLM
from .config import DEFAULT_CANDIDATES, NONE, Candidate, ShrinkConfig, parse_candidate, parse_overrides


def installed(spec: str) -> bool:
    """Whether the backend `spec` needs is importable here (weights are checked when it loads)."""
    from ..specs import MODEL_SCHEMES, check_backend, parse

    try:
        check_backend(parse(spec, MODEL_SCHEMES)[0])
    except (MissingBackend, ZeroshiftError):
        return False
    return True


def candidate_list(cfg: ShrinkConfig) -> list[Candidate]:
    """The candidates to make: the given ones, or the defaults whose backends are installed; each checked to
    be an image encoder (a VLM's image side too, for transfer) before anything loads."""
    if cfg.candidates == (NONE,):
        return []
    if cfg.candidates:
        return check(cfg.candidates)
    chosen = [c for c in DEFAULT_CANDIDATES if installed(parse_candidate(c).spec)]
    if not chosen:
        raise ZeroshiftError("no candidate is installed: give --candidates METHOD:SPEC (e.g. distill:student-cnn) or "
                             "install an encoder backend (zeroshift models lists them)")
    return check(tuple(chosen))


def check(candidates: tuple[str, ...], option: str = "--candidates") -> list[Candidate]:
    """The parsed candidates, each of the kind its method needs (one-line SpecError otherwise)."""
    from ..compose import STUDENT_EXAMPLES
    from ..specs import require

    chosen = [parse_candidate(c) for c in candidates]
    for c in chosen:
        if c.method == "transfer":
            require(c.spec, ("image", "vlm"), "candidate encoder", option)
        else:
            require(c.spec, "image", "candidate student", option, examples=STUDENT_EXAMPLES)
    if len({c.folder for c in chosen}) != len(chosen):
        raise ZeroshiftError(f"{option}: two candidates have the same name once written as a folder; list each once")
    return chosen


def method_config(cfg: ShrinkConfig, c: Candidate, fit: list[str], out: Path):
    """The method's options for candidate `c`: its defaults, then --transfer / --distill, then what shrink
    sets itself (teacher, the fit images, the run folder, seed, runtime, device)."""
    own = dict(teacher=cfg.teacher, data=tuple(fit), out=str(out), seed=cfg.seed, runtime=cfg.runtime,
               device=cfg.device, overwrite=True, quiet=cfg.quiet)
    if c.method == "transfer":
        from ..methods.config import TransferConfig

        return TransferConfig(**parse_overrides(cfg.transfer, TransferConfig, "--transfer"), encoder=c.spec, **own)
    from ..methods.config import DistillConfig

    return DistillConfig(**parse_overrides(cfg.distill, DistillConfig, "--distill"), student=c.spec, **own)


def make(cfg: ShrinkConfig, c: Candidate, fit: list[str], out: Path, progress: bool) -> VLM:
    """Train candidate `c` on the fit images into the run folder `out` (a killed run resumes from its
    checkpoint); returns it loaded as a VLM."""
    mcfg = method_config(cfg, c, fit, out)
    if c.method == "transfer":
        from ..methods.transfer import transfer

        return transfer(mcfg, progress=progress)
    from ..methods.distill import distill

    return distill(mcfg, progress=progress)


__all__ = ["candidate_list", "check", "installed", "make", "method_config"]
