"""`run:PATH[@DIGEST]`: any finished run folder loaded as a VLM, by one table of kinds.

Each kind's loader rebuilds the frozen parts from the specs the run recorded (encoder, teacher,
towers), loads the trained weights exactly (load_part) and checks every recorded dim. A teacher is
loaded as its text side alone (compose.text_side; for a run teacher, TEXT_KINDS), so a bridged or
distilled VLM holds its own image path and the teacher's text tower, never the teacher's image tower.
The loaded VLM carries the folder (`run_folder`) and its config (`run_config`), so callers such as
serve read what a run is from the model instead of re-reading its files. The on-disk format is
runfolder.py's.

A run may be built on other runs (`--teacher run:...`): each is loaded by its recorded absolute path,
refused with one line when missing or retrained since (its weights digest differs from the one recorded),
and a chain of runs that comes back to one being loaded is a cycle, refused. A relative path in a run's
config.json is read relative to the run folder (runspecs.py).
"""
from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

import torch

from .compose import build_student, text_side, tower
from .errors import CacheError, CacheMismatch, MissingWeights, ZeroshiftError
from .models.aligned import Heads
from .models.bridge import Bridge
from .models.runtime import accelerate
from .models.student import architecture_spec
from .models.vlm import VLM, TextSide, TowersVLM
from .runfolder import DEPENDS, is_run, read_config, read_run, recorded_weights
from .runspecs import recorded_specs, split_run
from .specs import load
from .version import __version__

Loader = Callable[[Path, dict, dict[str, torch.Tensor], str], VLM]  # (folder, config, state, runtime) -> VLM
TextLoader = Callable[[Path, dict, dict[str, torch.Tensor]], TextSide]  # (folder, config, state) -> text side
_LOADING: ContextVar[tuple[Path, ...]] = ContextVar("zeroshift_runs_loading", default=())  # outermost first


def load_part(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, folder: Path,
              what: str) -> torch.nn.Module:
    """Load the `prefix.*` tensors of a run's state into `module`, exactly: a missing, extra or reshaped
    tensor is a one-line CacheMismatch saying the run is damaged or `what` (e.g. 'from another student')."""
    weights = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    expected = module.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) or [
        k for k in expected if tuple(expected[k].shape) != tuple(weights[k].shape)]
    if wrong:
        raise CacheMismatch(f"{folder}: model.safetensors does not match its {prefix} config (at {', '.join(wrong[:3])}); "
                            f"the run is damaged or {what}")
    module.load_state_dict(weights)
    return module


def _teacher_text(folder: Path, config: dict, dim: int) -> TextSide:
    """The teacher's text side alone (compose.text_side: its image tower is never kept), checked to give
    `dim`-d embeddings."""
    teacher = text_side(config["teacher"])
    if teacher.dim == dim:
        return teacher
    if config["kind"] == "bridge":
        raise CacheMismatch(f"{folder}: the bridge expects a {dim}-d teacher, but {config['teacher']!r} gives "
                            f"{teacher.dim}-d features")
    raise CacheMismatch(f"{folder} was distilled into a {dim}-d joint space, but teacher {config['teacher']} "
                        f"gives {teacher.dim}-d; the teacher spec resolves to another model")


def load_bridge(folder: Path, config: dict, state: dict[str, torch.Tensor], runtime: str) -> VLM:
    """A transfer run: the encoder, then the bridge, beside the teacher's text side (its text tower
    alone: the teacher's image tower is neither built nor kept where its scheme allows)."""
    bridge = Bridge.from_config(config["bridge"])
    load_part(bridge, state, "bridge", folder, "from another bridge; retrain it")
    encoder = load(config["encoder"], runtime=runtime)
    if encoder.dim != bridge.source_dim:
        raise CacheMismatch(f"{folder}: the bridge expects a {bridge.source_dim}-d encoder, but "
                            f"{config['encoder']!r} gives {encoder.dim}-d features")
    return TowersVLM(image=encoder, text=_teacher_text(folder, config, bridge.teacher_dim), image_head=bridge.eval(),
                     spec=config["spec"], dim=bridge.teacher_dim).eval()


def bridge_text(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> TextSide:
    """A transfer run's text side: its teacher's (the encoder and the bridge are not loaded)."""
    dim = config.get("bridge", {}).get("teacher_dim") if isinstance(config.get("bridge"), dict) else None
    if not isinstance(dim, int):
        raise CacheError(f"{folder}: config.json lacks or mistypes bridge.teacher_dim; the run is damaged, retrain it")
    return TextSide(_teacher_text(folder, config, dim), None, config["spec"], dim)


def load_student(folder: Path, config: dict, state: dict[str, torch.Tensor], runtime: str) -> VLM:
    """A distill run: the student rebuilt from its architecture (no pretrained download) with the run's
    weights as image tower, beside the teacher's text tower."""
    try:
        student_spec, _ = str(config["student"]), str(config["teacher"])  # both must be recorded
        dim, features = int(config["dims"]["teacher"]), int(config["dims"]["student"])
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{folder}: config.json lacks or mistypes {e} (student, teacher, dims.teacher, "
                         "dims.student); the run is damaged, retrain it") from None
    student = build_student(architecture_spec(student_spec), dim)
    if student.encoder.dim != features:
        raise CacheMismatch(f"{folder} was trained with {features}-d student features, but {student_spec} now "
                            f"gives {student.encoder.dim}-d; the run is damaged or from another student")
    load_part(student, state, "student", folder, "from another student")
    student.spec = config["spec"] + "/image"
    teacher = _teacher_text(folder, config, dim)
    image = accelerate(student.eval(), runtime)
    return TowersVLM(image=image, text=teacher, spec=config["spec"], dim=dim).eval()


def student_text(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> TextSide:
    """A distill run's text side: its teacher's (the student is not built)."""
    try:
        dim = int(config["dims"]["teacher"])
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{folder}: config.json lacks or mistypes {e} (dims.teacher); the run is damaged, "
                         "retrain it") from None
    return TextSide(_teacher_text(folder, config, dim), None, config["spec"], dim)


def _aligned_dims(folder: Path, config: dict) -> tuple[int, int, int]:
    """(image, text, joint) dims an align run recorded; CacheError when they or its two specs are missing."""
    try:
        str(config["image"]), str(config["text"])  # both tower specs must be recorded
        return tuple(int(config["dims"][k]) for k in ("image", "text", "joint"))  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{folder}: config.json lacks or mistypes {e} (image, text, dims.image/text/joint); "
                         "the run is damaged, retrain it") from None


def _aligned_tower(folder: Path, config: dict, state: dict[str, torch.Tensor], side: str, want: int,
                   runtime: str = "torch"):
    """One tower of an align run rebuilt from its spec, checked to give `want`-d features, with its
    finetuned blocks (if any) loaded from the run."""
    tuned = {k[len(side) + 1:]: v for k, v in state.items() if k.startswith(side + ".")}
    model = tower(str(config[side]), side, "torch" if tuned else runtime)
    if model.dim != want:
        raise CacheMismatch(f"{folder} was trained on a {want}-d {side} tower, but {config[side]!r} now gives "
                            f"{model.dim}-d; the spec resolves to another model")
    if tuned:
        own = dict(model.named_parameters())
        wrong = [k for k, v in tuned.items() if k not in own or own[k].shape != v.shape]
        if wrong:
            raise CacheMismatch(f"{folder}: finetuned {side} weights do not fit {config[side]!r} "
                                f"({', '.join(wrong[:3])}); the run is damaged or from another tower")
        with torch.no_grad():
            for k, v in tuned.items():
                own[k].copy_(v)
        model.spec = f"{config['spec']}/{side}"  # caches keyed by spec must not reuse the pretrained tower's
        if side == "image":
            model = accelerate(model, runtime)
    return model


def _aligned_heads(folder: Path, state: dict[str, torch.Tensor], dims: tuple[int, int, int]) -> Heads:
    heads = Heads(*dims)
    load_part(heads, state, "heads", folder, "from other towers; retrain it")
    return heads.eval()


def load_aligned(folder: Path, config: dict, state: dict[str, torch.Tensor], runtime: str) -> VLM:
    """An align run: both towers rebuilt from their specs, their trained blocks (finetune) and the heads
    loaded from the run."""
    dims = _aligned_dims(folder, config)
    image = _aligned_tower(folder, config, state, "image", dims[0], runtime)
    text = _aligned_tower(folder, config, state, "text", dims[1])
    heads = _aligned_heads(folder, state, dims)
    return TowersVLM(image=image, text=text, spec=config["spec"], image_head=heads.image,
                     text_head=heads.text, dim=dims[2]).eval()


def aligned_text(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> TextSide:
    """An align run's text side: its text tower (finetuned blocks loaded) and text head; no image tower."""
    dims = _aligned_dims(folder, config)
    text = _aligned_tower(folder, config, state, "text", dims[1])
    return TextSide(text, _aligned_heads(folder, state, dims).text, config["spec"], dims[2])


KINDS: dict[str, Loader] = {"bridge": load_bridge, "student": load_student, "aligned": load_aligned}
# each kind's text side alone, for a run that is another run's teacher; a kind missing here is loaded whole
TEXT_KINDS: dict[str, TextLoader] = {"bridge": bridge_text, "student": student_text, "aligned": aligned_text}


def _cycle(folder: Path, key: str, path: Path) -> CacheError:
    """The one-line error for `folder`'s `key` naming `path`, a run folder already being loaded."""
    chain = _LOADING.get()
    shown = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
    return CacheError(f"run folders are built on each other in a cycle: {shown} (the {key} in {folder}/config.json); "
                      "a run cannot be built on itself, retrain it on another run")


def _check_depends(folder: Path, config: dict, specs: dict[str, str]) -> None:
    """Each run folder the run is built on must be there, not one being loaded (a cycle), and hold the
    weights recorded when the run was written."""
    pins = config.get(DEPENDS) if isinstance(config.get(DEPENDS), dict) else {}
    for key, spec in specs.items():
        if not spec.startswith("run:"):
            continue
        path = split_run(spec[4:])[0].resolve()
        if path in _LOADING.get():
            raise _cycle(folder, key, path)
        relative = "" if spec == config[key] else \
            " (a relative path in config.json is read relative to the run folder)"
        if not is_run(path):
            raise MissingWeights(f"run folder {folder} is built on the {key} run folder {path}, which is missing"
                                 f"{relative}; restore it there or retrain {folder}")
        pin = pins.get(key)
        if isinstance(pin, dict) and isinstance(pin.get("weights_sha256"), str):
            now = recorded_weights(path, read_config(path))
            if now != pin["weights_sha256"]:
                raise CacheMismatch(f"run folder {folder} is built on the {key} run folder {path} "
                                    f"@{pin['weights_sha256'][:12]}, which has changed since (now @{now[:12]}: "
                                    f"retrained or replaced); restore it or retrain {folder}")


def _check_dims(folder: Path, config: dict, vlm: VLM) -> None:
    """The built VLM's dims must be those recorded: `dims.teacher` (joint space), `dims.encoder` (image tower)."""
    dims = config.get("dims") if isinstance(config.get("dims"), dict) else {}
    image = getattr(vlm, "image", None)
    found = [("teacher", vlm.dim, "joint space"), ("encoder", getattr(image, "dim", None), "image tower")]
    for key, got, what in found:
        want = dims.get(key)
        if isinstance(want, int) and got is not None and int(got) != want:
            raise CacheMismatch(f"{folder} was trained with a {want}-d {what} ({key} {config.get(key, '?')}), "
                                f"but it now loads as {got}-d; the {key} spec resolves to another model")


def load_run(arg: str, runtime: str = "torch") -> VLM:
    """The VLM a run folder holds, from `PATH[@DIGEST]`. Its spec is `run:<absolute path>@<digest>`
    (12 hex of the sha256 of model.safetensors recorded when the run was written, which the file is
    checked against), so caches keyed by spec change when the weights do."""
    return _guarded(arg, runtime, text=False)


def load_run_text(arg: str) -> TextSide:
    """The text side alone of the VLM a run folder holds (for a run that is another run's teacher), its
    spec `run:<absolute path>@<digest>/text`; the same checks as load_run, no image tower built."""
    return _guarded(arg, "torch", text=True)


def _guarded(arg: str, runtime: str, text: bool):
    if not arg:
        raise ZeroshiftError("run: needs a folder, e.g. run:runs/my-bridge")
    folder, want = split_run(arg)
    folder = folder.resolve()
    if folder in _LOADING.get():
        raise _cycle(_LOADING.get()[-1], "run", folder)
    token = _LOADING.set((*_LOADING.get(), folder))
    try:
        return _load(folder, want, runtime, text)
    finally:
        _LOADING.reset(token)


def _load(folder: Path, want: str | None, runtime: str, text: bool = False):
    config, state = read_run(folder)
    digest = recorded_weights(folder, config)
    if want is not None and not digest.startswith(want):
        raise CacheMismatch(f"run:{folder}@{want} asks for other weights than the folder holds "
                            f"(@{digest[:12]}): it was retrained; use run:{folder}@{digest[:12]} or drop the @")
    kind = config["kind"]
    if kind not in KINDS:
        raise ZeroshiftError(f"{folder} is a run of kind {kind!r}, which this zeroshift ({__version__}) cannot load; "
                             f"known kinds: {', '.join(sorted(KINDS))}")
    specs = recorded_specs(config, folder)  # relative paths read against the folder, not the current directory
    _check_depends(folder, config, specs)
    spec = f"run:{folder}@{digest[:12]}"
    full = {**config, **specs, "spec": spec}
    if text:
        side = TEXT_KINDS[kind](folder, full, state) if kind in TEXT_KINDS else \
            _named(KINDS[kind](folder, full, state, runtime), spec).text_side()
        _check_dims(folder, config, side)
        return side.eval()
    vlm = _named(KINDS[kind](folder, full, state, runtime), spec)
    _check_dims(folder, config, vlm)
    vlm.run_folder, vlm.run_config = folder, config
    return vlm.eval()


def _named(vlm: VLM, spec: str) -> VLM:
    vlm.spec = spec
    return vlm
