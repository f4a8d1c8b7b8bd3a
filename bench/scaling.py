"""Scaling from 1 to 2 processes under torchrun (gloo, CPU), measured side by side in one run.

Two workloads, each run as a user runs it (the `zeroshift` command in a subprocess), once as one
process and once as `torchrun --standalone --nproc_per_node=2`, alternating (best of --repeats each):
  embed   `zeroshift embed` of --rows rows of Fashion-MNIST test with a small catalogue model, into a
          fresh cache folder each time; images/s of the whole command, and at the margin: beside each
          run one of --batch-size rows gives the fixed cost (start-up, model loading, rendezvous), and
          the extra rows over the extra seconds cancel it. The 2-process cache is compared with the
          1-process one row for row.
  train   `zeroshift distill` (student-cnn, 1 epoch, the same global batch) on a Fashion-MNIST train
          prefix whose teacher targets and pixels were cached by an untimed warm-up run; steps/s and
          images/s of the training loop from the run's metrics.jsonl (first logged step to last).
Both configurations get the same CPU threads in all (--threads: one process with all of them, two
with half each) and no CUDA device (CUDA_VISIBLE_DEVICES is emptied), so any speed-up comes from
spreading the work over processes rather than threads, and the machine's core count caps it.

    python bench/scaling.py [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import conditions, timed, write_results

import zeroshift
from zeroshift.cache.embed import DEFAULT_SHARD_ROWS
from zeroshift.errors import ZeroshiftError

HERE = Path(__file__).parent
TEACHER = "conse:effnet-lite2+minilm"
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
             "ROLE_RANK", "TORCHELASTIC_RUN_ID")
def zeroshift_script() -> str:
    """The `zeroshift` console script installed beside this Python."""
    found = Path(sys.executable).with_name("zeroshift")
    script = str(found) if found.is_file() else shutil.which("zeroshift")
    if not script:
        raise ZeroshiftError("no `zeroshift` command beside this Python; install the package (pip install -e .)")
    return script


def command(procs: int, args: list[str]) -> list[str]:
    """`zeroshift ARGS` as one process, or under torchrun with `procs` processes, all with this Python."""
    if procs == 1:
        return [sys.executable, zeroshift_script(), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            zeroshift_script(), *args]


def environment(threads: int) -> dict[str, str]:
    """This environment without launcher variables, CPU only, `threads` intra-op threads per process."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    return env


def run(procs: int, args: list[str], threads: int, what: str) -> float:
    """`zeroshift ARGS` on `procs` processes, its output passing through; wall seconds."""
    cmd = command(procs, args)
    print(f"{what}: {' '.join(cmd[1:])} (OMP_NUM_THREADS={threads})", flush=True)
    done = timed(lambda: subprocess.run(cmd, env=environment(threads), check=False).returncode)
    code, seconds = done.result, done.best
    if code != 0:
        raise ZeroshiftError(f"{what} exited with code {code} after {seconds:.0f} s; see its output above")
    print(f"{what}: {seconds:.1f} s", flush=True)
    return seconds


def rows_per_rank(rows: int, procs: int) -> list[int]:
    """Rows each rank embeds: shards of DEFAULT_SHARD_ROWS rows, shard i to rank i % procs."""
    out = [0] * procs
    for i, start in enumerate(range(0, rows, DEFAULT_SHARD_ROWS)):
        out[i % procs] += min(DEFAULT_SHARD_ROWS, rows - start)
    return out


def embed_once(args, procs: int, out: Path) -> dict:
    """Wall seconds of `zeroshift embed` on --rows rows and on --batch-size rows (the fixed cost: start-up,
    model loading, rendezvous, the cache's manifest), each into a fresh folder; images/s of the whole
    command and at the margin (the extra rows over the extra seconds, the fixed cost cancelled)."""
    threads, walls = args.threads // procs, {}
    for rows in (args.batch_size, args.rows):
        cli = ["embed", "--model", args.model, "--data", f"{args.data}[:{rows}]", "--out", str(out / str(rows)),
               "--batch-size", str(args.batch_size), "--workers", "0"]
        walls[rows] = run(procs, cli, threads, f"embed {rows} rows, {procs} process(es)")
    extra = walls[args.rows] - walls[args.batch_size]
    return {"procs": procs, "threads": threads, "wall_s": walls[args.rows], "fixed_wall_s": walls[args.batch_size],
            "wall_img_s": args.rows / walls[args.rows],
            "img_s": (args.rows - args.batch_size) / extra if extra > 0 else None, "cache": str(out / str(args.rows))}


def train_once(args, procs: int, out: Path) -> dict:
    data = f"{args.train_data}[:{args.train_rows}]"
    cli = ["distill", "--teacher", TEACHER, "--data", data, "--student", "student-cnn", "--epochs", "1",
           "--batch-size", str(args.train_batch), "--device", "cpu", "--seed", "0", "--out", str(out)]
    threads = args.threads // procs
    wall = run(procs, cli, threads, f"distill, {procs} process(es)")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in log if "loss" in r]
    first, last = steps[0], steps[-1]
    if last["step"] <= first["step"]:
        raise ZeroshiftError(f"{out}: fewer than two logged steps; raise --train-rows")
    config = json.loads((out / "config.json").read_text())
    steps_s = (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])
    return {"procs": procs, "threads": threads, "wall_s": wall, "steps": last["step"],
            "timed_steps": last["step"] - first["step"], "steps_s": steps_s, "img_s": steps_s * args.train_batch,
            "per_rank_batch": args.train_batch // procs, "final_loss": last["loss"],
            "train_s": config["seconds"]["train"]}


def compare_caches(one: str, two: str) -> dict:
    """Row-for-row comparison of the 1-process and 2-process caches."""
    a, b = zeroshift.load_features(one), zeroshift.load_features(two)
    same_rows = bool(np.array_equal(a.index, b.index))
    diff = float(np.abs(a.numpy() - b.numpy()).max()) if same_rows else float("nan")
    return {"rows": len(a), "same_rows": same_rows, "max_abs_diff": diff,
            "max_abs_value": float(np.abs(a.numpy()).max())}


def best(runs: list[dict], procs: int, key: str) -> float | None:
    """The highest `key` of the runs with `procs` processes (None where none has it)."""
    values = [r[key] for r in runs if r["procs"] == procs and r[key] is not None]
    return max(values) if values else None


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="zeroshift-bench-scaling-") as tmp:
        work = Path(tmp)
        # untimed warm-ups: the ONNX export and data download for embed; teacher targets and pixels for distill
        run(1, ["embed", "--model", args.model, "--data", f"{args.data}[:{args.batch_size}]",
                "--out", str(work / "warm-embed")], args.threads, "warm-up embed")
        embeds = []
        for rep in range(args.repeats):  # alternate, so load on the machine hits both alike
            for procs in (1, 2):
                embeds.append(embed_once(args, procs, work / f"embed-{procs}-{rep}"))
        check = compare_caches(*(next(r["cache"] for r in embeds if r["procs"] == p) for p in (1, 2)))
        train_once(args, 1, work / "warm-train")
        trains = []
        for rep in range(args.repeats):
            for procs in (1, 2):
                trains.append(train_once(args, procs, work / f"train-{procs}-{rep}"))
    for r in embeds:
        r.pop("cache")
    summary = {}
    for name, runs, keys in (("embed", embeds, ("img_s", "wall_img_s")), ("train", trains, ("img_s", "steps_s"))):
        for key in keys:
            one, two = best(runs, 1, key), best(runs, 2, key)
            summary[f"{name}_{key}"] = {"one": one, "two": two, "speedup": two / one if one and two else None}
    return {**conditions(), "cores": os.cpu_count(),
            "settings": {"model": args.model, "data": args.data, "rows": args.rows, "batch_size": args.batch_size,
                         "rows_per_rank": rows_per_rank(args.rows, 2), "shard_rows": DEFAULT_SHARD_ROWS,
                         "teacher": TEACHER, "train_data": f"{args.train_data}[:{args.train_rows}]",
                         "train_batch": args.train_batch, "threads": args.threads, "repeats": args.repeats,
                         "quick": args.quick},
            "summary": summary, "cache_check": check, "embed_runs": embeds, "train_runs": trains}


def report(r: dict) -> str:
    s, m, c = r["settings"], r["summary"], r["cache_check"]
    e1, e2 = (next(x for x in r["embed_runs"] if x["procs"] == p) for p in (1, 2))
    t1, t2 = (next(x for x in r["train_runs"] if x["procs"] == p) for p in (1, 2))
    head = ["workload", "1 process", "2 processes", "speed-up", "parallel efficiency"]

    def row(what: str, key: str, digits: int) -> str:
        one, two, up = m[key]["one"], m[key]["two"], m[key]["speedup"]
        cell = lambda v: "-" if v is None else f"{v:.{digits}f}"
        return (f"| {what} | {cell(one)} | {cell(two)} | {'-' if up is None else f'{up:.2f}x'} | "
                f"{'-' if up is None else f'{up / 2:.2f}'} |")

    lines = [
        "# Scaling: 1 vs 2 processes under torchrun" + (" (quick smoke run)" if s["quick"] else ""), "",
        (f"Machine: {r['machine']}; 1-min load average {r['load_avg_1min'][0]:.1f} at the start, "
         f"{r['load_avg_1min'][1]:.1f} at the end. One run; every figure below was measured in it, the two "
         f"configurations alternating, best of {s['repeats']} each."), "",
        (f"Threads: 1 process x {s['threads']} threads against 2 processes x {s['threads'] // 2} thread(s) "
         f"(OMP_NUM_THREADS), gloo on the CPU. **This machine has {r['cores']} cores, which the two processes share "
         "(as may other work: see the load average), and the ceiling is the core count**: both configurations "
         "already run on the same cores, so the second process adds none; on an idle machine its speed-up can only "
         "come from using them better than one process's intra-op threads do, and 2x (parallel efficiency = "
         "speed-up / processes = 1.0) would need twice the cores. Under other load, one process whose threads wait "
         "on each other whenever the scheduler takes a core away loses more than two independent processes do, "
         "which inflates the speed-up."), "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        row(f"embed {s['model']}, images/s at the margin", "embed_img_s", 1),
        row("embed, images/s of the whole command", "embed_wall_img_s", 1),
        row(f"train student-cnn, steps/s (global batch {s['train_batch']})", "train_steps_s", 2),
        row("train, images/s", "train_img_s", 1), "",
        (f"embed: `zeroshift embed --model {s['model']} --data {s['data']}[:N] --batch-size {s['batch_size']} "
         f"--workers 0` into a fresh folder each time, with N = {s['rows']} and N = {s['batch_size']}. At the margin "
         f"= ({s['rows']} - {s['batch_size']}) rows / the difference of the two commands' wall seconds, which "
         "cancels the fixed cost (start-up, model loading, the torchrun rendezvous, the manifest): the first run "
         f"took {e1['wall_s']:.1f} s vs {e1['fixed_wall_s']:.1f} s for {s['batch_size']} rows (1 process), "
         f"{e2['wall_s']:.1f} s vs {e2['fixed_wall_s']:.1f} s (2 processes). The cache's shards hold "
         f"{s['shard_rows']} rows (the default --shard-rows) and rank r takes shards i % 2 == r, so the "
         f"ranks embed {' and '.join(map(str, s['rows_per_rank']))} rows; under {2 * s['shard_rows']} rows the "
         "second rank would have nothing to do. "
         f"Cache check: the 2-process cache holds {'the same' if c['same_rows'] else 'DIFFERENT'} {c['rows']} rows "
         f"as the 1-process one, largest absolute difference {c['max_abs_diff']:.2g} (features up to "
         f"{c['max_abs_value']:.2g}; the two ran the model with different thread counts)."), "",
        (f"train: `zeroshift distill --teacher {s['teacher']} --data {s['train_data']} --student student-cnn "
         f"--epochs 1 --batch-size {s['train_batch']} --device cpu` ({s['train_batch'] // 2} images per rank per "
         "step with 2 processes), teacher targets and pixels cached by an untimed warm-up run. Steps/s of the "
         f"training loop from its first logged step to its last ({t1['timed_steps']} steps, metrics.jsonl); final "
         f"loss {t1['final_loss']:.4f} (1 process) vs {t2['final_loss']:.4f} (2 processes); whole command "
         f"{t1['wall_s']:.1f} s vs {t2['wall_s']:.1f} s."), "",
        f"Produced by `python bench/scaling.py{' --quick' if s['quick'] else ''}`; scaling.json holds every run."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="image encoder or VLM spec to embed with (default effnet-lite0; tiny-clip:seed=0 "
                                   "with --quick)")
    p.add_argument("--data", default="fashion-mnist:test", help="data spec (no row slice) to embed a prefix of")
    p.add_argument("--rows", type=int, default=2 * DEFAULT_SHARD_ROWS,
                   help=f"rows to embed (the CLI shards {DEFAULT_SHARD_ROWS} rows; 2 shards split evenly)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-data", default="fashion-mnist:train", help="data spec (no row slice) to distill on")
    p.add_argument("--train-rows", type=int, default=4096)
    p.add_argument("--train-batch", type=int, default=64, help="global batch of both training configurations")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each configuration in all (even)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each configuration; the best counts")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny-clip:seed=0 unless --model, 1 repeat, "
                                                        "1024 training rows")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.threads < 2 or args.threads % 2:
        p.error("--threads must be even and at least 2")
    if args.quick:
        args.repeats, args.train_rows = 1, min(args.train_rows, 1024)
    args.model = args.model or ("tiny-clip:seed=0" if args.quick else "effnet-lite0")
    result = measure(args)
    write_results(args.out, "scaling", report(result), result)


if __name__ == "__main__":
    main()
