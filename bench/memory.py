"""Peak memory of fitting a bridge on a cache larger than it should hold: streamed vs mapped vs in RAM.

Two synthetic caches of --rows rows (source and teacher, --dim-d, float16; the teacher a fixed linear
mix of the source plus noise) are written with zeroshift.cache.write_features. Then the same Zoom-shot
fit (closed-form warm start + one epoch of the default mse + pgkd terms over a 1000-class synthetic
prompt vocabulary) runs three times, each in a fresh process whose peak resident set (ru_maxrss) is
read at the end:
  stream     zeroshift's reader: rows read from the shard files with pread into each batch
  mapped     every shard memory-mapped with np.load(mmap_mode='r'), rows gathered from the maps
  in-memory  both caches loaded into RAM (float16) first
plus a process that only imports zeroshift and torch (the floor). Target (issue 6): stream peak RSS
below 1.5 GB at 1,000,000 rows x 768-d.

    python bench/memory.py [--rows 1000000] [--dim 768] [--quick] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MODES = ("floor", "stream", "mapped", "in-memory")
TARGET_GB = 1.5


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kilobytes


def write_caches(folder: Path, rows: int, dim: int, chunk: int = 8192) -> None:
    """Source rows N(0, 1); teacher = source @ mix + 0.1 noise (a bridge has something to learn)."""
    from zeroshift.cache import write_features

    mix = np.random.default_rng(1).standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)  # [dim, dim]

    def side(teacher: bool):
        for start in range(0, rows, chunk):
            rng = np.random.default_rng([0, start])
            x = rng.standard_normal((min(chunk, rows - start), dim), dtype=np.float32)  # [n, dim]
            yield (x @ mix + 0.1 * rng.standard_normal(x.shape, dtype=np.float32)) if teacher else x

    for name, teacher in (("source", False), ("teacher", True)):
        write_features(folder / name, side(teacher), rows=rows, dim=dim, model=f"synthetic-{name}",
                       data=f"synthetic:{rows}", dtype="float16")


class InMemory:
    """A cache read into RAM whole, with the reader API fit() uses."""

    def __init__(self, feats) -> None:
        self.x = np.concatenate([np.load(feats.path / s["name"]) for s in feats.manifest["shards"]])  # [N, dim]
        self.dim, self.path, self.index, self.manifest = feats.dim, feats.path, feats.index, feats.manifest

    def __len__(self) -> int:
        return len(self.x)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(rows)].astype(np.float32)


class Mapped:
    """A cache whose shards are memory-mapped (np.load(mmap_mode='r')), rows gathered from the maps."""

    def __init__(self, feats) -> None:
        self.maps = [np.load(feats.path / s["name"], mmap_mode="r") for s in feats.manifest["shards"]]
        self.rows = feats.manifest["shard_rows"]
        self.dim, self.path, self.index, self.manifest = feats.dim, feats.path, feats.index, feats.manifest

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for k in np.unique(rows // self.rows):
            sel = rows // self.rows == k
            out[sel] = self.maps[k][rows[sel] - k * self.rows]
        return out


def child(mode: str, folder: Path) -> dict:
    """One measured fit in this process; returns its figures."""
    import torch
    from common import timed  # adds nothing to what the fit imports anyway

    from zeroshift.cache import load_features
    from zeroshift.methods.transfer import TransferConfig, fit
    from zeroshift.zeroshot.prompts import Prompts

    out = {"mode": mode, "floor_gb": peak_gb()}
    if mode == "floor":
        return {**out, "peak_gb": peak_gb()}
    src, tch = (load_features(folder / n, verify=False) for n in ("source", "teacher"))
    if mode != "stream":
        src, tch = ({"mapped": Mapped, "in-memory": InMemory}[mode](f) for f in (src, tch))
    classes = torch.nn.functional.normalize(torch.randn(1000, tch.dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    prompts = Prompts(tuple(f"class {i}" for i in range(1000)), classes, 1000)  # [1000, d], one prompt per class
    cfg = TransferConfig(teacher="synthetic-teacher", encoder="synthetic-source", data="synthetic", out="-")
    fitted = timed(lambda: fit(cfg, src, tch, prompts, progress=False))
    result = fitted.result
    return {**out, "peak_gb": peak_gb(), "fit_s": fitted.best, "rows": result.rows[0],
            "steps": result.history[-1].get("step") if result.history else 0,
            "final_loss": next((r["loss"] for r in reversed(result.history) if "loss" in r), None)}


def run(args) -> dict:
    # common is imported here, not at the top: the child processes must not import torch first
    from common import timed

    work = Path(tempfile.mkdtemp(prefix="zeroshift-memory-", dir=args.workdir))
    try:
        write_s = timed(lambda: write_caches(work, args.rows, args.dim)).best
        print(f"wrote 2 x {args.rows:,} x {args.dim} float16 rows in {write_s:.0f} s", flush=True)
        rows = []
        for mode in MODES:
            done = subprocess.run([sys.executable, __file__, "--child", mode, str(work)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bench/memory.py: the {mode} run failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cache_gb = 2 * args.rows * args.dim * 2 / 2**30
    return {"rows": args.rows, "dim": args.dim, "cache_gb": cache_gb, "write_s": write_s, "runs": rows}


def write(result: dict, out: Path) -> None:
    from common import write_results

    by = {r["mode"]: r for r in result["runs"]}
    stream = by["stream"]["peak_gb"]
    lines = [
        "# Memory: a bridge fitted on a cache larger than it should hold", "",
        f"{result['rows']:,} paired rows, {result['dim']}-d float16 per side ({result['cache_gb']:.2f} GB on disk "
        "for both caches); the Zoom-shot default fit (closed-form warm start, then one epoch of mse + pgkd "
        "over 1,000 synthetic prompt classes, batch 256), each mode in a fresh process, peak resident set "
        "(ru_maxrss) at its end. One run, side by side.", "",
        "| reader | peak RSS (GB) | vs stream | fit (s) | steps |", "|---|---|---|---|---|",
    ]
    for mode in MODES:
        r = by[mode]
        fit_s = f"{r['fit_s']:.0f}" if "fit_s" in r else "-"
        lines.append(f"| {mode} | {r['peak_gb']:.2f} | {r['peak_gb'] / stream:.2f}x | {fit_s} | {r.get('steps', '-')} |")
    met = "met" if stream < TARGET_GB else "not met"
    lines += ["", f"Target: peak RSS below {TARGET_GB} GB with the streamed reader at 1,000,000 x 768: "
              f"{stream:.2f} GB at {result['rows']:,} x {result['dim']} ({met}"
              + ("" if result["rows"] >= 1_000_000 else ", a smaller run than the target's") + ").",
              f"`floor` is a process that only imports zeroshift and torch ({by['floor']['peak_gb']:.2f} GB)."]
    write_results(out, "memory", "\n".join(lines) + "\n", result)  # its footer names the machine


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--workdir", default=None, help="where the temporary caches go (default: the system temp folder)")
    p.add_argument("--quick", action="store_true", help="smoke run: 50,000 rows")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.quick:
        args.rows = min(args.rows, 50_000)
    write(run(args), Path(args.out))


if __name__ == "__main__":
    main()
