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
file so that one atomic rename writes both; `load` recomputes it and refuses, in one line that names
the file and says how to start over, a checkpoint that does not match.
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

FILE = "last.pt"
FORMAT = 2  # 2: a digest over the contents (format 1 had none, and is refused as another version)
DIGEST = "digest"


class Checkpoints:
    """The checkpoint folder of one run: `save` every `every` steps (0: at epoch ends only), `load`
    the last one (None when there is none), `clear` after the run has finished."""

    def __init__(self, folder: str | os.PathLike, identity: dict[str, Any], every: int = 0) -> None:
        if every < 0:
            raise ZeroshiftError("checkpoint interval must be at least 0 steps (0: at the end of each epoch)")
        self.folder, self.every = Path(folder).expanduser().absolute(), every
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # plain JSON values
        self.path = self.folder / FILE
        self.saved_step: int | None = None  # step of the last checkpoint written or read
        self.resumed_step: int | None = None  # step this run resumed from, if it did

    def exists(self) -> bool:
        return self.path.is_file()

    def _refused(self, problem: str, error: type[CacheError] | type[CacheMismatch] = CacheError) -> ZeroshiftError:
        return error(f"checkpoint {self.path} {problem}; delete {self.folder} or pass --no-resume to start over")

    def load(self) -> dict | None:
        """The last checkpoint, checked against its digest and this run's identity; None when the folder
        has none."""
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
        theirs = json.loads(state["identity"])
        for key in sorted(set(theirs) | set(self.identity)):
            if theirs.get(key) != self.identity.get(key):
                raise CacheMismatch(
                    f"checkpoint {self.path} belongs to another run ({key}={_short(theirs.get(key))}, this run "
                    f"has {_short(self.identity.get(key))}); pass --no-resume to start over or choose another --out")
        self.saved_step = self.resumed_step = int(state["step"])
        return state

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


# Options that do not change what a run computes: a checkpoint written under other values still fits.
RUN_ONLY = ("out", "overwrite", "resume", "keep_checkpoints", "checkpoint_every", "device", "runtime",
            "eval_dataset", "eval_rows")


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


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
