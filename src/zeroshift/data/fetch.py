"""Fetch the offline catalogue's Debian packages: `apt-get download` (no root) + `dpkg-deb -x`.

A fetched dataset lives in `<data dir>/<name>/` with the package's tree unpacked under it and a
`.complete` marker written last, so an interrupted fetch is redone, never taken as complete.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .. import paths
from ..errors import DataError, SpecError
from ..io import write_json

# catalogue name -> Debian package
PACKAGES: dict[str, str] = {
    "fashion-mnist": "dataset-fashion-mnist",
    "tuxpaint": "tuxpaint-stamps-default",
    "openclipart": "openclipart-png",
}
MARKER = ".complete"


def dataset_dir(name: str, root: Path | None = None) -> Path:
    """Where catalogue dataset `name` is (or would be) unpacked."""
    return Path(root if root is not None else paths.data_dir()) / name


def is_fetched(name: str, root: Path | None = None) -> bool:
    """True when `name` was fetched to the end (its `.complete` marker exists)."""
    return (dataset_dir(name, root) / MARKER).is_file()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise DataError(f"`{cmd[0]}` is not available: fetching catalogue data needs apt-get and dpkg-deb") from e


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _apt_download(package: str, dest: Path) -> Path:
    """Download `package`'s .deb into `dest` (running `apt-get update` once if the lists are empty)."""
    proc = _run(["apt-get", "download", package], dest)
    if proc.returncode != 0:
        # Empty package lists ("Unable to locate package") are the usual cause on a fresh machine.
        update = _run(["apt-get", "update"], dest)
        if update.returncode != 0:
            raise DataError(f"apt-get download {package} failed ({_last_line(proc)}) "
                            f"and apt-get update failed ({_last_line(update)})")
        proc = _run(["apt-get", "download", package], dest)
        if proc.returncode != 0:
            raise DataError(f"apt-get download {package} failed: {_last_line(proc)}")
    debs = sorted(dest.glob("*.deb"))
    if not debs:
        raise DataError(f"apt-get download {package} produced no .deb file")
    return debs[0]


def _unpack(deb: Path, target: Path) -> None:
    proc = _run(["dpkg-deb", "-x", str(deb), str(target)], target.parent)
    if proc.returncode != 0:
        raise DataError(f"dpkg-deb -x {deb.name} failed: {_last_line(proc)}")


def fetch(name: str, root: Path | None = None, force: bool = False) -> Path:
    """Download and unpack catalogue dataset `name`; returns its folder. A complete fetch is reused."""
    if name not in PACKAGES:
        raise SpecError(f"nothing to fetch for {name!r}; fetchable: {', '.join(sorted(PACKAGES))}")
    target = dataset_dir(name, root)
    if is_fetched(name, root) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".zeroshift-{name}-*"):  # temp folders of a killed fetch
        shutil.rmtree(stale, ignore_errors=True)
    package = PACKAGES[name]
    with tempfile.TemporaryDirectory(prefix=f".zeroshift-{name}-", dir=target.parent) as tmp:
        deb = _apt_download(package, Path(tmp))
        partial = Path(tmp) / "unpacked"
        partial.mkdir()
        _unpack(deb, partial)
        if target.exists():  # an interrupted fetch, or force: the marker goes first, then the rest
            (target / MARKER).unlink(missing_ok=True)
            shutil.rmtree(target)
        partial.rename(target)
    write_json(target / MARKER, {"name": name, "package": package, "deb": deb.name}, indent=None)
    return target
