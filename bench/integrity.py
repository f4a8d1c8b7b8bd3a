"""Damage cases, tried for real: what zeroshift does when a file it reads back is broken or hostile.

Each case builds a small artefact (a feature cache, a checkpoint, a run folder, an image, a request),
damages a copy of it, and runs what a user would run next. The outcome column is what happened:
`recomputed` (the rerun rebuilt the damaged part, and its result equals the undamaged one), `refused`
(a one-line error, quoted), or the HTTP status `serve` answered. A traceback, a silently different
result or a multi-line error is written down as such and makes the script exit 1.

    python bench/integrity.py [--out bench/results]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results, zeroshift_home  # noqa: E402

from zeroshift import specs  # noqa: E402
from zeroshift.cache import embed, load_features  # noqa: E402
from zeroshift.data.base import BadImage  # noqa: E402
from zeroshift.data.images import decode_image  # noqa: E402
from zeroshift.errors import ZeroshiftError  # noqa: E402
from zeroshift.train.checkpoint import Checkpoints  # noqa: E402

MODEL = "tiny-clip:seed=0"


def _images(root: Path) -> Path:
    """A folder dataset of 3 classes x 8 noisy colour squares."""
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _outcome(fn: Callable[[], object]) -> tuple[str, str]:
    """('refused', message) for a ZeroshiftError of one line, ('ok', '') when fn returns, else the failure."""
    try:
        fn()
    except BadImage as e:  # a row-level refusal: embed and eval skip the row and list it with this reason
        return "skipped and listed", str(e)
    except ZeroshiftError as e:
        text = str(e)
        return ("refused", text) if "\n" not in text else ("MULTI-LINE ERROR", text.splitlines()[0])
    except Exception as e:  # noqa: BLE001 - exactly what this benchmark looks for
        return "TRACEBACK", f"{type(e).__name__}: {e}"
    return "ok", ""


# ---------------------------------------------------------------- feature caches
def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) - 3 if at is None else at
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _edit_json(path: Path, fn: Callable[[object], object]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


CACHE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "a byte flipped inside a shard": lambda f: _flip(f / "shard-00001.npy"),
    "a zero-byte shard": lambda f: (f / "shard-00001.npy").write_bytes(b""),
    "labels.npy relabelled": lambda f: np.save(f / "labels.npy", np.roll(np.load(f / "labels.npy"), 8)),
    "labels.npy truncated": lambda f: (f / "labels.npy").write_bytes((f / "labels.npy").read_bytes()[:40]),
    "labels.npy deleted": lambda f: (f / "labels.npy").unlink(),
    "keys in meta.json reversed": lambda f: _edit_json(
        f / "meta.json", lambda m: {**m, "keys": m["keys"][::-1]}),
    "meta.json not JSON": lambda f: (f / "meta.json").write_text("{"),
    "manifest.json a JSON list": lambda f: _edit_json(f / "manifest.json", lambda m: [m]),
    "a manifest entry without sha256": lambda f: _edit_json(
        f / "manifest.json", lambda m: {**m, "shards": [{k: v for k, v in e.items() if k != "sha256"}
                                                        for e in m["shards"]]}),
    "bad_rows pointing outside the shard": lambda f: _edit_json(
        f / "manifest.json", lambda m: {**m, "shards": [{**e, "bad_rows": [999], "n_bad": 1} for e in m["shards"]]}),
}


def cache_cases(work: Path) -> list[dict]:
    data = f"folder:{_images(work / 'images')}"
    clean = embed(MODEL, data, out=work / "clean", shard_rows=8, progress=False, runtime="torch")
    reference = {p.name: p.read_bytes() for p in sorted(clean.path.iterdir()) if p.suffix in (".npy", ".json")
                 and p.name != "config.json"}
    rows = []
    for what, damage in CACHE_DAMAGE.items():
        folder = work / "damaged"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(clean.path, folder)
        damage(folder)
        kind, message = _outcome(lambda: load_features(folder))
        rows.append({"artefact": "feature cache", "damage": what, "reader": "load_features (eval, transfer, ...)",
                     "outcome": kind, "message": message if kind != "ok" else "read a damaged cache silently"})
        kind, message = _outcome(lambda: embed(MODEL, data, out=folder, shard_rows=8, progress=False,
                                               runtime="torch"))
        if kind == "ok":
            again = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name in reference}
            kind = "recomputed" if again == reference else "DIFFERENT RESULT"
        rows.append({"artefact": "feature cache", "damage": what, "reader": "embed (the same command again)",
                     "outcome": kind, "message": message})
    return rows


# ---------------------------------------------------------------- checkpoints
def checkpoint_cases(work: Path) -> list[dict]:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    state = {"task": net.state_dict(), "step": 6, "epoch": 0, "index": 6, "history": "[]"}
    identity = {"method": "bench", "teacher": MODEL}
    cases: dict[str, Callable[[Path], None]] = {
        "a value inside a tensor changed (digest kept)": lambda p: _resave(p, lambda s: s["task"]["1.running_var"]
                                                                        .add_(1e-3)),
        "the step is a string": lambda p: _resave(p, lambda s: s.__setitem__("step", "six"), fix_digest=True),
        "no run identity": lambda p: _resave(p, lambda s: s.pop("identity"), fix_digest=True),
        "bytes cut off the end": lambda p: p.write_bytes(p.read_bytes()[:-200]),
    }
    rows = []
    for what, damage in cases.items():
        folder = work / "ckpt" / what.replace(" ", "-")
        Checkpoints(folder, identity).save(state)
        damage(folder / "last.pt")
        kind, message = _outcome(lambda: Checkpoints(folder, identity).load())
        rows.append({"artefact": "checkpoint", "damage": what, "reader": "resume", "outcome": kind,
                     "message": message if kind != "ok" else "resumed from a damaged checkpoint"})
    return rows


def _resave(path: Path, edit: Callable[[dict], object], fix_digest: bool = False) -> None:
    from zeroshift.train.checkpoint import digest

    state = torch.load(path, weights_only=True)
    edit(state)
    if fix_digest:  # an intact file laid out wrongly: the layout checks, not the digest, must catch it
        state["digest"] = digest(state)
    torch.save(state, path)


# ---------------------------------------------------------------- run folders
def run_cases(work: Path) -> list[dict]:
    from zeroshift.methods.transfer import TransferConfig, transfer

    data = f"folder:{work / 'images'}"
    run = work / "run"
    transfer(TransferConfig(teacher=MODEL, encoder="tiny-clip:seed=1", data=data, method="lstsq", out=str(run)))

    def nan_weights(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        name = next(iter(tensors))
        tensors[name][0] = float("nan")
        save_file(tensors, folder / "model.safetensors", metadata={"kind": "bridge"})

    def redigest(folder: Path) -> None:  # what a deliberately crafted folder would do, to pass the digests
        from zeroshift.runfolder import INTEGRITY, config_digest, weights_digest

        config = json.loads((folder / "config.json").read_text())
        config[INTEGRITY] = {"weights_sha256": weights_digest(folder), "config_sha256": config_digest(config)}
        (folder / "config.json").write_text(json.dumps(config))

    cases: dict[str, Callable[[Path], None]] = {
        "a byte flipped in model.safetensors": lambda f: _flip(f / "model.safetensors"),
        "NaN weights in a valid file": nan_weights,
        "NaN weights, digests recomputed to match": lambda f: (nan_weights(f), redigest(f)),
        "config.json edited to another encoder of the same width": lambda f: _edit_json(
            f / "config.json", lambda c: {**c, "encoder": "tiny-clip:seed=2"}),
        "config.json naming its own folder as the teacher, digests recomputed": lambda f: (_edit_json(
            f / "config.json", lambda c: {**c, "teacher": f"run:{f}"}), redigest(f)),
    }
    rows = []
    for what, damage in cases.items():
        folder = work / "runs" / what.replace(" ", "-")
        shutil.copytree(run, folder)
        damage(folder)
        kind, message = _outcome(lambda: specs.load(f"run:{folder}"))
        rows.append({"artefact": "run folder", "damage": what, "reader": "load (predict, eval, serve, ...)",
                     "outcome": kind, "message": message if kind != "ok" else "loaded a damaged run silently"})
    return rows


# ---------------------------------------------------------------- images and requests
def _jpeg(progressive: bool, side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG", progressive=progressive)
    data = buf.getvalue()
    i = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) + 5  # frame header: height, width
    return data[:i] + side.to_bytes(2, "big") * 2 + data[i + 4:]


def image_and_request_cases(work: Path) -> list[dict]:
    from fastapi.testclient import TestClient

    from zeroshift.serve.app import create_app
    from zeroshift.serve.config import ServeConfig

    bomb = _jpeg(True, 32768)
    (work / "bomb.jpg").write_bytes(bomb)
    kind, message = _outcome(lambda: decode_image(work / "bomb.jpg"))
    rows = [{"artefact": "image", "damage": f"progressive JPEG declaring 32768x32768 ({len(bomb):,} bytes)",
             "reader": "embed, eval, predict (decode)", "outcome": kind, "message": message}]
    vlm = specs.load(MODEL)
    app = create_app(ServeConfig(models=("tiny",), runtime="torch"), models={"tiny": vlm})
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(png, "PNG")
    image = {"name": "red.png", "data": base64.b64encode(png.getvalue()).decode()}
    requests = {
        "a progressive JPEG bomb uploaded": dict(files=[("image", ("b.jpg", bomb, "image/jpeg"))],
                                                 data={"labels": "a\nb"}),
        "a label with a lone surrogate": dict(json={"images": [image], "labels": ["ok", "d\ud800g"]}),
        "a label with a NUL": dict(json={"images": [image], "labels": ["ok", "a\x00b"]}),
    }
    with TestClient(app) as client:
        for what, request in requests.items():
            if "json" in request:  # a lone surrogate cannot be UTF-8: send it escaped, as a JSON client would
                r = client.post("/v1/classify", content=json.dumps(request["json"]).encode(),
                                headers={"content-type": "application/json"})
            else:
                r = client.post("/v1/classify", **request)
            detail = r.json().get("error", r.text) if r.status_code >= 400 else "answered"
            rows.append({"artefact": "serve request", "damage": what, "reader": "POST /v1/classify",
                         "outcome": f"HTTP {r.status_code}", "message": str(detail)})
    return rows


def spec_cases(work: Path) -> list[dict]:
    (work / "h.csv").write_text("image_id,category\na.png,cat\n")
    cases = {
        "folder:~nosuchuser/x": lambda: specs.dataset("folder:~nosuchuser/x"),
        "a CSV header naming no path column": lambda: specs.dataset(f"csv:{work / 'h.csv'}"),
        "synthetic:size=100000": lambda: specs.dataset("synthetic:classes=cat+dog,size=100000"),
        "tiny-clip:size=20000": lambda: specs.load("tiny-clip:size=20000"),
    }
    rows = []
    for what, fn in cases.items():
        kind, message = _outcome(fn)
        rows.append({"artefact": "spec", "damage": what, "reader": "any command", "outcome": kind,
                     "message": message})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--quick", action="store_true", help="accepted for the suite; every case is quick")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, zeroshift_home(Path(tmp) / "home"):
        work = Path(tmp)
        rows = cache_cases(work) + checkpoint_cases(work) + run_cases(work) + image_and_request_cases(work) \
            + spec_cases(work)
        for r in rows:  # the temporary folder is noise in the table
            r["message"] = r["message"].replace(f"{work}/", "").replace(str(work), ".")
    good = {"refused", "recomputed", "skipped and listed"}
    failures = [r for r in rows if r["outcome"] not in good and not r["outcome"].startswith("HTTP 4")]
    lines = ["# Damage cases", "",
             "What zeroshift does with a damaged or hostile file or request, tried for real by "
             "`bench/integrity.py`. The tests (`tests/test_*integrity*.py`) cover each case and more.", "",
             "| artefact | damage | read by | outcome | message (first 140 characters) |", "|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|")[:140]
        lines.append(f"| {r['artefact']} | {r['damage']} | {r['reader']} | {r['outcome']} | {msg} |")
    lines += ["", f"{len(rows)} cases, {len(failures)} not handled."]
    write_results(args.out, "integrity", "\n".join(lines) + "\n", {"cases": rows, "not_handled": len(failures)})
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
