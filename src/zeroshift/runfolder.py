"""A trained run on disk: a folder written all at once (RunWriter), read back whole (read_run).

A run folder holds `config.json` (its "kind", the specs it was built from, dims, zeroshift version,
whatever the method records), `model.safetensors` (the trained weights only, a flat name -> tensor
dict; frozen backbones are referenced by spec), `README.md` (the model card) and any extra files
(metrics.jsonl, plots). RunWriter stages everything in a sibling `OUT.partial-<pid>` and renames it
to OUT when complete, so a killed run never leaves a folder that looks finished. Turning a folder
into a VLM is runs.py's job.

Every file read back is checked against what wrote it: config.json records (`integrity`) the sha256 of
model.safetensors and of its own content, and (`depends`) the absolute path and weights digest of each
run folder the run is built on; read_run refuses a damaged or replaced weights file, a config.json
edited by hand, and weights that hold NaN or inf. Runs written before digests were recorded (no
`integrity`) are still read, without those two digest checks.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from .errors import CacheError, CacheMismatch, MissingWeights, ZeroshiftError
from .io import write_bytes, write_text
from .cards import front_matter, with_front_matter
from .runspecs import SPEC_KEYS, recorded_specs, spec_files, split_run
from .version import __version__
from .paths import user_path

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
INTEGRITY, DEPENDS = "integrity", "depends"  # config.json keys: digests of this run, runs it is built on
REQUIRED = ("kind", "zeroshift_version")
_PARTIAL = re.compile(r"\.(partial|old)-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def leftovers(out: Path) -> list[Path]:
    """The `OUT.partial-<pid>` and `OUT.old-<pid>` folders beside `out` (from this or other processes)."""
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + _PARTIAL.pattern)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name))


def clean_stale(out: Path) -> list[Path]:
    """Remove the leftovers of runs into `out` whose process is gone (a kill mid-run); returns them."""
    removed = []
    for path in leftovers(out):
        pid = int(_PARTIAL.search(path.name).group(2))
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _describe(folder: Path, keys: list[str]) -> str:
    """A short description of what `folder` holds, by the given config keys."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(config, dict):
        return ""
    shown = [k for k in dict.fromkeys(["kind", *keys]) if k in config and isinstance(config[k], (str, int, float))]
    return ", ".join(f"{k}={config[k]}" for k in shown)


def is_run(folder: Path) -> bool:
    """True if `folder` holds a finished zeroshift run (a config.json with a kind and version)."""
    try:
        config = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(k in config for k in REQUIRED)


def check_out(out: Path, overwrite: bool, identity: dict | None = None) -> None:
    """Raise ZeroshiftError unless a run may be written to `out`: absent or empty, or (with overwrite)
    a finished zeroshift run. A folder that is not a run is never replaced, even with overwrite."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ZeroshiftError(f"--out {out} is a file, not a run folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not is_run(out):
        raise ZeroshiftError(f"--out {out} is a non-empty folder that holds no zeroshift run; "
                             "choose another --out (it is never overwritten)")
    if not overwrite:
        what = _describe(out, list(identity or {}))
        raise ZeroshiftError(f"--out {out} already holds a run ({what}); pass --overwrite or choose another --out")


class RunWriter:
    """Writes a run folder atomically: everything goes to `OUT.partial-<pid>` (`.path`), and `finish`
    renames it to OUT. Refuses at construction if OUT already holds something (see check_out).

    Under torchrun only rank 0 writes: on the other ranks (`active=False`) `.path` is a throwaway
    temporary folder and `finish` writes nothing."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False, identity: dict | None = None,
                 active: bool = True) -> None:
        self.out = user_path(out).absolute()
        self.overwrite, self.identity, self.active = overwrite, dict(identity or {}), active
        check_out(self.out, overwrite, self.identity)
        for key in SPEC_KEYS:  # a run built on the folder it replaces: refused before any work
            if isinstance(self.identity.get(key), str):
                self._refuse_self(key, self.identity[key])
        self.path = self.out.with_name(f"{self.out.name}.partial-{os.getpid()}")
        self.finished = False

    def __enter__(self) -> RunWriter:
        if not self.active:
            import tempfile

            self.path = Path(tempfile.mkdtemp(prefix="zeroshift-rank-"))
            return self
        check_out(self.out, self.overwrite, self.identity)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.out)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.finished or not self.active:
            shutil.rmtree(self.path, ignore_errors=True)

    def finish(self, config: dict, state: dict[str, torch.Tensor], card: str) -> Path:
        """Write config.json, model.safetensors and README.md into staging, then rename it to OUT."""
        from safetensors.torch import save

        if not self.path.is_dir():
            raise ZeroshiftError("RunWriter.finish called outside its `with` block")
        if not self.active:
            self.finished = True
            return self.out
        if not isinstance(config.get("kind"), str):
            raise ZeroshiftError("a run's config needs a 'kind' (e.g. 'bridge')")
        tensors = {}
        for name, t in state.items():
            t = t.detach().cpu().contiguous().clone()
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ZeroshiftError(f"refusing to save a run whose weight {name!r} holds NaN or inf; "
                                     "lower the learning rate or check the features")
            tensors[name] = t
        specs = recorded_specs(config, Path.cwd())  # paths as the user typed them, relative to here
        depends = self._pin_runs(specs)
        config = {**config, **specs, "zeroshift_version": config.get("zeroshift_version", __version__),
                  "tensors": {name: list(t.shape) for name, t in tensors.items()}, DEPENDS: depends}
        # through bytes: safetensors' own save_file creates 0600 files, unreadable to a user's team
        write_bytes(self.path / WEIGHTS, save(tensors, metadata={"kind": config["kind"]}))
        config = json.loads(json.dumps({k: v for k, v in config.items() if k != INTEGRITY}, default=str))
        config[INTEGRITY] = {"weights_sha256": weights_digest(self.path), "config_sha256": config_digest(config)}
        (self.path / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (self.path / CARD).write_text(_with_files(card, config, self.out.name), encoding="utf-8")
        self._publish()
        self.finished = True
        return self.out

    def _refuse_self(self, key: str, spec: str) -> None:
        if spec.startswith("run:") and split_run(spec[4:])[0].resolve() == self.out.resolve():
            raise ZeroshiftError(f"the {key} {spec} is the --out folder {self.out}: a run cannot be built on "
                                 "the run it replaces; choose another --out")

    def _pin_runs(self, specs: dict[str, str]) -> dict[str, dict]:
        """{key: {path, weights_sha256}} for each spec in `specs` naming a run folder, whose spec becomes
        `run:<absolute path>@<digest>`: loading this run refuses that run once retrained or moved."""
        depends = {}
        for key, spec in specs.items():
            if not spec.startswith("run:"):
                continue
            self._refuse_self(key, spec)
            path, want = split_run(spec[4:])
            path = path.resolve()
            digest = recorded_weights(path, read_config(path))
            if want is not None and not digest.startswith(want):
                raise CacheMismatch(f"the {key} {spec} asks for other weights than {path} holds (@{digest[:12]})")
            depends[key] = {"path": str(path), "weights_sha256": digest}
            specs[key] = f"run:{path}@{digest[:12]}"
        return depends

    def _publish(self) -> None:
        """Rename staging to OUT; an existing run at OUT is moved aside first and removed after."""
        check_out(self.out, self.overwrite, self.identity)  # something may have appeared meanwhile
        old = None
        if self.out.exists():
            if any(self.out.iterdir()):
                old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.out, old)
            else:
                self.out.rmdir()
        os.replace(self.path, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def cost_lines(cost: dict) -> list[str]:
    """A model card's cost section from VLM.cost(): the image path's parameters (paid per image) and the
    text side's (paid per label set), apart."""
    def shown(side: str) -> str:
        n = (cost.get(side) or {}).get("parameters")
        return "unknown" if n is None else f"{n:,} ({n / 1e6:.2f}M)"

    return ["", "## Cost", "", "| side | parameters | runs |", "|---|---|---|",
            f"| image path (image tower and head) | {shown('image')} | once per image |",
            f"| text side (a bridged or distilled model's is its teacher's text tower) | {shown('text')} | "
            "once per label set; the label embeddings are reused for every image |"]


def _with_files(card: str, config: dict, name: str, records: list[dict] | None = None,
                cost: dict | None = None) -> str:
    """The card with the hub's YAML front matter (cards.py), then its cost section when `cost` is given,
    ending in a section on the files and runs the run is built on when its specs name any."""
    card = with_front_matter(card, front_matter(config, records or [], name))
    card = card if card.endswith("\n") else card + "\n"
    if cost is not None:
        card += "\n".join(cost_lines(cost)) + "\n"
    files = {key: spec_files(config[key]) for key in SPEC_KEYS if isinstance(config.get(key), str)}
    lines = [f"- {key}: `{config[key]}`" + (
        f" (run folder, weights sha256 `{config[DEPENDS][key]['weights_sha256'][:16]}...`: loading refuses it "
        "once retrained, replaced or missing)" if key in config.get(DEPENDS, {}) else "")
        for key, found in files.items() if found]
    if not lines:
        return card
    return card + "\n".join(["", "## Files this run is built on", "",
                             "Paths in `config.json` are absolute; a relative path there is read relative to "
                             "this folder, never to the current directory.", "", *lines]) + "\n"


def write_card(folder: str | os.PathLike, card: str, cost: dict | None = None) -> Path:
    """Replace a finished run's README.md atomically (e.g. with results added after evaluation, and the
    cost of the loaded model: VLM.cost()); its front matter's model-index lists the records in FOLDER/results."""
    from .zeroshot.records import read_records

    folder = Path(folder)
    config = read_config(folder)
    records = read_records(folder / "results") if (folder / "results").is_dir() else []
    return write_text(folder / CARD, _with_files(card, config, folder.name, records, cost))


def replace_card_section(folder: str | os.PathLike, heading: str, body: list[str]) -> Path:
    """Replace the body of section `heading` (e.g. '## Results') of a finished run's README.md, up to the
    next heading of that level, atomically; a card without that section gets it at the end."""
    read_config(folder)  # a finished run, or a one-line error
    path = user_path(folder) / CARD
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    level = heading.split(" ", 1)[0] + " "
    if heading in lines:
        start = lines.index(heading) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith(level)), len(lines))
        lines[start:end] = ["", *body, ""]
    else:
        lines += ["", heading, "", *body]
    return write_text(path, "\n".join(lines).rstrip("\n") + "\n")


def weights_digest(folder: Path) -> str:
    """sha256 (hex) of the run's model.safetensors."""
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_digest(config: dict) -> str:
    """sha256 (hex) of a run's config as JSON with sorted keys, leaving out its own integrity record."""
    body = {k: v for k, v in config.items() if k != INTEGRITY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recorded_weights(folder: Path, config: dict) -> str:
    """The sha256 of model.safetensors recorded when the run was written (read_run checks the file
    against it); computed from the file for a run written before digests were recorded."""
    record = config.get(INTEGRITY)
    if isinstance(record, dict) and isinstance(record.get("weights_sha256"), str):
        return record["weights_sha256"]
    return weights_digest(folder)


def read_config(folder: str | os.PathLike) -> dict:
    """The config.json of a finished run folder; one-line errors for a missing, unfinished or damaged run."""
    folder = user_path(folder)
    if _PARTIAL.search(folder.name):
        raise CacheError(f"{folder} is an unfinished run (the staging folder of a run that did not complete)")
    if not folder.is_dir():
        raise MissingWeights(f"no run folder at {folder}")
    config_file = folder / CONFIG
    if not config_file.is_file():
        partial = [p.name for p in leftovers(folder)]
        hint = f" (unfinished attempt beside it: {partial[0]}; rerun to finish)" if partial else ""
        raise CacheError(f"{folder} holds no finished zeroshift run: no {CONFIG}{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CacheError(f"{config_file} is not readable JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict) or any(k not in config for k in REQUIRED):
        raise CacheError(f"{config_file} is incomplete: it needs {' and '.join(REQUIRED)}")
    return config


def read_run(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state) of a finished run folder; one-line errors for a missing, unfinished or damaged run."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = user_path(folder)
    config = read_config(folder)
    if not (folder / WEIGHTS).is_file():
        raise CacheError(f"{folder} is incomplete: no {WEIGHTS}")
    try:
        data = (folder / WEIGHTS).read_bytes()  # hashed and loaded from the same bytes
        state = load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise CacheError(f"{folder / WEIGHTS} is damaged: {str(e).splitlines()[0][:200]}") from None
    _check_tensors(folder, config, state)
    _check_integrity(folder, config, hashlib.sha256(data).hexdigest())
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CacheError(f"{folder / WEIGHTS}: weight {name!r} holds NaN or inf; the run is damaged, retrain it")
    return config, state


def _check_integrity(folder: Path, config: dict, weights: str) -> None:
    """The weights and config.json must be those recorded when the run was written (when it recorded them)."""
    record = config.get(INTEGRITY)
    if record is None:
        return  # written before digests were recorded: read as it is
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("weights_sha256",
                                                                                       "config_sha256")):
        raise CacheError(f"{folder / CONFIG}: its {INTEGRITY} record is malformed; the run is damaged, retrain it")
    if record["weights_sha256"] != weights:
        raise CacheError(f"run folder {folder}: {WEIGHTS} does not match the digest recorded when the run was "
                         "written (damaged or replaced); retrain or restore it")
    if record["config_sha256"] != config_digest(config):
        raise CacheError(f"run folder {folder}: {CONFIG} was edited after the run was written (its digest differs "
                         "from the recorded one); restore it, or retrain to change what the run is built from")


def _check_tensors(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """The weights must be the ones config.json describes: same names and shapes, and every recorded
    dim present as an axis of some weight."""
    recorded = config.get("tensors")
    if isinstance(recorded, dict):
        found = {name: list(t.shape) for name, t in state.items()}
        if found != {k: list(v) for k, v in recorded.items()}:
            diff = sorted(set(recorded) ^ set(found)) or [k for k in recorded if list(recorded[k]) != found[k]]
            raise CacheMismatch(f"{folder / WEIGHTS} does not match {CONFIG} (differs at {', '.join(diff[:3])}); "
                                "the folder mixes files of different runs")
    dims = config.get("dims")
    if isinstance(dims, dict) and state:
        axes = {int(s) for t in state.values() for s in t.shape}
        for key, value in dims.items():
            if isinstance(value, int) and not isinstance(value, bool) and value not in axes:
                raise CacheMismatch(f"{folder}: {CONFIG} says {key} dim {value}, but no weight in {WEIGHTS} "
                                    f"has an axis of that size; the folder mixes files of different runs")
