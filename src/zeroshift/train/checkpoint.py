"""Training checkpoints: everything needed to resume a run exactly where it stopped.

A checkpoint is one file, `last.pt` in the checkpoint folder, written by `torch.save` to a temporary
name, flushed to disk and renamed over the previous one, so the file on disk is always a complete
checkpoint: a kill or a full disk mid-write leaves the last good one in place. It holds the task's
state (trainable weights and buffers), the optimizer, the schedule, the RNG states, the position
(epoch, batches done in it, step), the logged history and the run's identity. Identity is a flat
dict of what makes two runs the same run (specs, dims, loss, data fingerprint, options); resuming
with another identity is refused, naming the first key that differs. Files are read back with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only, never pickled code.

Silent damage is refused too: torch checks no checksum when it reads a file, so a flipped byte inside a
tensor would resume without a word and the run would no longer equal an uninterrupted one. Each
checkpoint therefore carries `digest`, a sha256 over everything else in it (see `digest`), inside the
file so that one atomic rename writes both; `load` recomputes it and checks the layout (identity and
history JSON, whole-number positions, every state part present), and `restore` checks that the task
state has this run's keys and shapes before loading anything. Each refusal is one line that names
the file and says how to start over.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CacheError, CacheMismatch, ZeroshiftError
from ..io import atomic_path
from ..paths import user_path

FILE = "last.pt"
FORMAT = 2  # 2: a digest over the contents (format 1 had none, and is refused as another version)
DIGEST = "digest"
NUMBERS = ("epoch", "index", "step", "total")  # whole numbers of 0 or more
PARTS = ("task", "optimizer", "schedule", "scaler", "rng")  # state dicts the loop restores
JSON = {"identity": dict, "history": list}  # JSON text and the type it must decode to


class Checkpoints:
    """The checkpoint folder of one run: `save` every `every` steps (0: at epoch ends only), `load`
    the last one (None when there is none), `clear` after the run has finished."""

    def __init__(self, folder: str | os.PathLike, identity: dict[str, Any], every: int = 0) -> None:
        if every < 0:
            raise ZeroshiftError("checkpoint interval must be at least 0 steps (0: at the end of each epoch)")
        self.folder, self.every = user_path(folder).absolute(), every
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # plain JSON values
        self.path = self.folder / FILE
        self.saved_step: int | None = None  # step of the last checkpoint written or read
        self.resumed_step: int | None = None  # step this run resumed from, if it did

    def exists(self) -> bool:
        return self.path.is_file()

    def _refused(self, problem: str, error: type[CacheError] | type[CacheMismatch] = CacheError) -> ZeroshiftError:
        return error(f"checkpoint {self.path} {problem}; delete {self.folder} or pass --no-resume to start over")

    def load(self) -> dict | None:
        """The last checkpoint, checked against its digest, its layout and this run's identity; None when
        the folder has none."""
        if not self.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged file: torch raises pickle, zip and runtime errors alike
            raise self._refused(f"is damaged ({type(e).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise self._refused("is not a zeroshift checkpoint of this version")
        try:
            intact = state.get(DIGEST) == digest(state)
        except TypeError:  # a value zeroshift never writes
            intact = False
        if not intact:
            raise self._refused("is damaged (its contents do not match the digest written with them)")
        decoded = {key: self._decoded(state, key, kind) for key, kind in JSON.items()}
        if not all(isinstance(row, dict) for row in decoded["history"]):
            raise self._refused("has a history that is not a list of rows")
        for key in NUMBERS:
            value = state.get(key)
            if type(value) is not int or value < 0:
                raise self._refused(f"has {key} {_describe(value)}, not a whole number of 0 or more")
        for key in PARTS:
            if not isinstance(state.get(key), dict):
                raise self._refused(f"has no {key} state" if key not in state else
                                    f"has a {key} state that is {_describe(state[key])}, not a dict")
        theirs = decoded["identity"]
        for key in sorted(set(theirs) | set(self.identity)):
            if theirs.get(key) != self.identity.get(key):
                raise CacheMismatch(
                    f"checkpoint {self.path} belongs to another run ({key}={_short(theirs.get(key))}, this run "
                    f"has {_short(self.identity.get(key))}); pass --no-resume to start over or choose another --out")
        self.saved_step = self.resumed_step = state["step"]
        return state

    def _decoded(self, state: dict, key: str, kind: type) -> Any:
        """state[key] decoded from JSON, refused unless it is JSON text of a `kind`."""
        what = {"identity": "run identity"}.get(key, key)
        if key not in state:
            raise self._refused(f"has no {what}")
        try:
            value = json.loads(state[key])
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, kind):
            raise self._refused(f"has a {what} that is not a JSON {'object' if kind is dict else 'list'}")
        return value

    def restore(self, state: dict, task: torch.nn.Module, **parts: Any) -> None:
        """Load a checkpoint from `load` into `task`, each of `parts` (optimizer=, schedule=, scaler=: objects
        with load_state_dict) and the RNGs. A task state with other keys or shapes than this run's model,
        or a part its target refuses, is refused in one line naming the first difference."""
        ours, theirs = task.state_dict(), state["task"]
        for key in [*ours, *(k for k in theirs if k not in ours)]:
            if key not in theirs:
                problem = f"has no {key}"
            elif key not in ours:
                problem = f"holds {key}, which this run's model has not"
            elif not isinstance(theirs[key], torch.Tensor) or theirs[key].shape != ours[key].shape:
                problem = f"holds {key} as {_describe(theirs[key])}, this run's model has {_describe(ours[key])}"
            else:
                continue
            raise self._refused(f"does not fit this run's model (its task state {problem})", CacheMismatch)
        for name, target in {"task": task, **parts}.items():
            try:
                target.load_state_dict(state[name])
                if isinstance(target, torch.optim.Optimizer):
                    _check_moments(target)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                raise self._refused(f"does not fit this run's {name} ({cause})", CacheMismatch) from None
        try:
            set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise self._refused(f"has an unusable RNG state ({type(e).__name__})") from None

    def restore_part(self, state: dict, name: str, target: Any) -> None:
        """Load the optional part `name` of a checkpoint from `load` into `target` (load_state_dict);
        refused in one line when the part is missing or does not fit."""
        part = state.get(name)
        if not isinstance(part, dict):
            raise self._refused(f"has no {name} state", CacheMismatch)
        try:
            target.load_state_dict(part)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise self._refused(f"does not fit this run's {name} ({cause})", CacheMismatch) from None

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` (plus identity, format and the digest over them) as the new last checkpoint,
        atomically."""
        full = {**state, "format": FORMAT, "identity": json.dumps(self.identity, sort_keys=True)}
        full[DIGEST] = digest(full)
        try:
            with atomic_path(self.path, durable=True) as tmp, open(tmp, "wb") as f:
                torch.save(full, f)
        except OSError as e:
            kept = (f"the last complete checkpoint (step {self.saved_step}) is kept" if self.saved_step is not None
                    else "no earlier checkpoint exists")
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise ZeroshiftError(f"could not write checkpoint step {state.get('step')} to {self.folder}: "
                                 f"{why}; {kept}") from None
        self.saved_step = int(state["step"])
        return self.path

    def clear(self) -> None:
        """Remove the checkpoint folder (a finished run needs it no more)."""
        for p in self.folder.glob(f"*{FILE}*") if self.folder.is_dir() else []:
            p.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # the user keeps other files there


def digest(state: Mapping[str, Any]) -> str:
    """sha256 (hex) over every value of `state` except its digest, in a canonical order that a torch.save
    and torch.load round trip keeps: dict keys sorted, sequences in order, each tensor as its dtype, shape
    and the bytes of its values (row-major, whatever its strides), every other value as its type and repr.
    Raises TypeError for a value a checkpoint should not hold."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST})
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    def put(tag: bytes, data: Any) -> None:  # length-prefixed, so no two layouts feed the same bytes
        h.update(tag + str(memoryview(data).nbytes).encode() + b":")
        h.update(data)

    if isinstance(value, torch.Tensor):
        put(b"T", f"{value.dtype}{list(value.shape)}".encode())
        flat = value.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)  # [numel]
        put(b"B", flat.view(torch.uint8).numpy())  # [numel * itemsize] raw bytes
    elif isinstance(value, Mapping):
        put(b"D", str(len(value)).encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        put(b"L", str(len(value)).encode())
        for item in value:
            _feed(h, item)
    elif value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
        put(b"V", f"{type(value).__name__}:{value!r}".encode())
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _check_moments(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError when a loaded per-parameter buffer (Adam moments, SGD momentum) is shaped unlike
    its parameter: torch would only fail at the next step, deep inside the update."""
    for param, buffers in optimizer.state.items():
        for name, buffer in buffers.items():
            if isinstance(buffer, torch.Tensor) and buffer.ndim and buffer.shape != param.shape:
                raise ValueError(f"its {name} of shape {list(buffer.shape)} is for a parameter of shape "
                                 f"{list(param.shape)}")


# Options that do not change what a run computes: a checkpoint written under other values still fits.
RUN_ONLY = ("out", "overwrite", "resume", "keep_checkpoints", "checkpoint_every", "device", "runtime",
            "eval_data", "eval_rows")


def run_checkpoints(out: Path, options: dict[str, Any], every: int, resume: bool, **identity: Any) -> Checkpoints:
    """The checkpoints of the run that writes `out`, kept in OUT.ckpt beside it. Their identity is every
    option that changes the result plus `identity` (data fingerprints, dims); without `resume` earlier
    ones are removed first (by rank 0, the others waiting)."""
    from .. import distributed as dist

    kept = {k: v for k, v in options.items() if k not in RUN_ONLY}
    checkpoints = Checkpoints(out.with_name(out.name + ".ckpt"), {**kept, **identity}, every)
    if not resume and dist.rank() == 0:
        checkpoints.clear()
    dist.barrier()
    return checkpoints


def _short(value: Any, n: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


def _describe(value: Any) -> str:
    """A value for a one-line message: tensors by dtype and shape (str() of one spans lines), else short JSON."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{'an' if dtype.startswith('int') else 'a'} {dtype} tensor of shape {list(value.shape)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return _short(value, 40)
    return f"a {type(value).__name__}"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
