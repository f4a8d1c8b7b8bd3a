"""Shrink benchmark (issue 15): `zeroshift shrink` against the separate commands it replaces.

One run, two offline domains and two teachers: `conse:effnet-lite2+minilm`, and a VLM that `align` makes
from EfficientNet-Lite2 and MiniLM on the even half of Tux Paint (made once, before anything is timed).
Fit images (unlabelled): a prefix of Fashion-MNIST train for Fashion-MNIST test; the even half of Tux Paint
for its odd half. For each teacher and domain, two arms, each a command line as a user would type it, each
in its own fresh $ZEROSHIFT_HOME (the fetched data linked in, no feature cache, no ONNX tower, no timing
cache), so both start cold:
- shrink: one `zeroshift shrink` (split, train every candidate, judge on held-out images, evaluate, export
  and time);
- separate: `transfer` / `distill` per candidate on the same fit part, `eval` of the teacher and of each
  candidate on the held-out part and the eval set, `export` of each, and the agreement with the teacher on
  the held-out part computed from the feature caches those commands left (the bench's own code, timed).
Reported per shrink: the chosen model's agreement and speed against the teacher's, the whole candidate
table (shrink's own table.md), wall seconds of both arms and their ratio, and each candidate's agreement
by both arms (the same configs and seeds: they should match). Timing at batch 1 and 32 is done by shrink
only; the separate arm has no command for it, so shrink does more work in its time.

    python bench/shrink.py [--quick] [--work DIR] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results, zeroshift_home

import zeroshift
from zeroshift import paths
from zeroshift.data.split import split_spec
from zeroshift.report import markdown_table
from zeroshift.shrinking.config import parse_candidate
from zeroshift.shrinking.report import ms

HERE = Path(__file__).parent
CONSE = "conse:effnet-lite2+minilm"
CANDIDATES = {"conse": ("transfer:effnet-lite0", "transfer:open-nsfw", "distill:student-cnn"),
              "aligned": ("transfer:effnet-lite0", "distill:student-cnn")}
DISTILL = {"views": "1", "epochs": "10"}  # the quickstart's students: one view, ten epochs
HOLDOUT, SEED = 0.2, 0


def domains(args) -> dict[str, tuple[str, str]]:
    """(fit images, labelled eval set) of each domain."""
    return {"fmnist": (f"fashion-mnist:train[:{args.fmnist_fit}]", f"fashion-mnist:test[::{args.fmnist_step}]"),
            "tux": ("tuxpaint[0::2]", "tuxpaint[1::2]")}


def fresh_home(work: Path, name: str) -> Path:
    """An empty $ZEROSHIFT_HOME with the fetched datasets linked in (nothing else: every cache starts cold)."""
    home = work / "homes" / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "data").symlink_to(paths.data_dir().resolve(), target_is_directory=True)
    return home


def command(args: list[str], home: Path, log: Path) -> float:
    """Wall seconds of one `zeroshift ...` command in `home` (its output appended to `log`)."""
    exe = Path(sys.executable).with_name("zeroshift")
    env = {**os.environ, "ZEROSHIFT_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ zeroshift {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([str(exe), *args], stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"zeroshift {' '.join(args)} exited {done.returncode}; see {log}")
    print(f"  {seconds:7.1f} s  zeroshift {' '.join(args)[:140]}", flush=True)
    return seconds


def flags(options: dict[str, str]) -> list[str]:
    return [a for k, v in options.items() for a in (f"--{k}", v)]


def shrink_arm(teacher: str, fit: str, test: str, labels: Path, candidates, folder: Path, home: Path, args) -> dict:
    out = folder / "shrink"
    seconds = command(["shrink", "--teacher", teacher, "--data", fit, "--labels", str(labels), "--eval-data", test,
                       "--candidates", *candidates, "--distill", ",".join(f"{k}={v}" for k, v in DISTILL.items()),
                       "--threads", str(args.threads), "--no-int8", "--holdout", str(HOLDOUT), "--seed", str(SEED),
                       "--out", str(out), "--quiet"], home, folder / "shrink.log")
    return {"seconds": seconds, "result": json.loads((out / "shrink_results.json").read_text()),
            "table": (out / "table.md").read_text()}


def separate_arm(teacher: str, fit: str, test: str, labels: Path, candidates, shrunk: dict, folder: Path,
                 home: Path, args) -> dict:
    """The same work as separate commands; seconds per kind of command, and each candidate's agreement."""
    fit_part, held = split_spec(fit, "fit", HOLDOUT, SEED), split_spec(fit, "held", HOLDOUT, SEED)
    log, runs = folder / "separate.log", folder / "separate"
    seconds = {"train": 0.0, "eval": 0.0, "export": 0.0, "agreement": 0.0}
    inputs = {r["name"]: r.get("float", {}).get("input", "pixels") for r in shrunk["rows"]}
    models = {teacher: teacher}
    (runs / "export").mkdir(parents=True)
    for name in candidates:
        c = parse_candidate(name)
        run = runs / paths.slug(name)
        common = ["--teacher", teacher, "--data", fit_part, "--out", str(run), "--seed", str(SEED), "--quiet"]
        if c.method == "transfer":
            seconds["train"] += command(["transfer", "--encoder", c.spec, *common], home, log)
        else:
            seconds["train"] += command(["distill", "--student", c.spec, *flags(DISTILL), *common], home, log)
        models[name] = f"run:{run}"
    for name, spec in models.items():
        seconds["eval"] += command(["eval", "--model", spec, "--data", held, test, "--out", str(runs / "results"),
                                    "--quiet"], home, log)
        seconds["export"] += command(["export", "--model", spec, "--labels", str(labels), "--input", inputs[name],
                                      "--out", str(runs / "export" / f"{paths.slug(name)}.onnx"), "--overwrite"], home, log)
    t0 = time.perf_counter()
    agree = agreements(models, teacher, held, labels, home)
    seconds["agreement"] = time.perf_counter() - t0
    return {"seconds": seconds, "total": sum(seconds.values()), "agreement": agree}


def agreements(models: dict[str, str], teacher: str, held: str, labels: Path, home: Path) -> dict[str, float]:
    """Top-1 agreement with the teacher over the labels on the held-out part, from the caches in `home`."""
    from zeroshift.data.templates import get_templates
    from zeroshift.zeroshot.classifier import classify, zeroshot_weights
    from zeroshift.zeroshot.labels import parse_labels

    with zeroshift_home(home):
        names = parse_labels(str(labels), files=True)
        preds = {}
        for name, spec in models.items():
            vlm = zeroshift.load(spec)
            f = zeroshift.embed(vlm, held, progress=False)
            w = zeroshot_weights(vlm, names, get_templates(None, None), progress=False)  # [C, d]
            preds[name] = (f.index, classify(f.torch(), w).argmax(1))  # rows, [N]
    t_rows, t_pred = preds.pop(teacher)
    out = {}
    for name, (rows, pred) in preds.items():
        assert (rows == t_rows).all(), f"{name} read other held-out rows than the teacher"
        out[name] = float((pred == t_pred).float().mean())
    return out


def make_aligned(work: Path) -> str:
    """The aligned teacher (align's run folder), made in the user's own home, outside every timed arm."""
    from zeroshift.methods.config import AlignConfig

    out = work / "aligned-lite2+minilm"
    if not (out / "config.json").is_file():
        zeroshift.align(AlignConfig(image="effnet-lite2", text="minilm", data=("tuxpaint[0::2]",), out=str(out),
                                    epochs=50, batch_size=128, overwrite=True, quiet=True), progress=False)
    return f"run:{out}"


def summary(name: str, teacher: str, domain: str, s: dict, sep: dict) -> dict:
    rows = s["result"]["rows"]
    chosen = s["result"]["chosen"]
    t = rows[0]
    return {"shrink": name, "teacher": teacher, "domain": domain, "shrink_s": s["seconds"], "separate_s": sep["total"],
            "separate_parts_s": sep["seconds"], "ratio": s["seconds"] / sep["total"],
            "teacher_ms": ms(t), "chosen": None if chosen is None else chosen["name"],
            "chosen_agreement": None if chosen is None else chosen["scores"]["agreement"],
            "chosen_ms": None if chosen is None else ms(chosen),
            "agreement": {r["name"]: {"shrink": r["scores"]["agreement"], "separate": sep["agreement"].get(r["name"])}
                          for r in rows[1:]},
            "rows": rows, "table": s["table"]}


def report(results: list[dict], args) -> str:
    lines = [(r["shrink"], f"{r['shrink_s']:.0f}", f"{r['separate_s']:.0f}", f"{r['ratio']:.2f}",
              r["chosen"] or "none", "-" if r["chosen"] is None else f"{r['chosen_agreement']:.3f}",
              f"{r['teacher_ms']:.1f}", "-" if r["chosen_ms"] is None else f"{r['chosen_ms']:.2f}",
              "-" if not r["chosen_ms"] else f"{r['teacher_ms'] / r['chosen_ms']:.1f}x") for r in results]
    text = ["# shrink against the separate commands", "",
            f"Each shrink is one `zeroshift shrink` command; the separate arm is `transfer`/`distill` per candidate, "
            f"`eval` and `export` of the teacher and each candidate, and the agreement computed from their caches. "
            f"Both arms start from an empty cache. Held-out share {HOLDOUT}, seed {SEED}; students "
            f"{', '.join(f'{k}={v}' for k, v in DISTILL.items())}; ms per image at batch 1 on {args.threads} "
            "thread(s), float export. Agreement is top-1 with the teacher over the labels on held-out images.", "",
            markdown_table(lines, ["shrink", "shrink s", "separate s", "shrink / separate", "chosen", "agreement",
                                   "teacher ms", "chosen ms", "speed-up"]), "",
            "Seconds of the separate arm by kind of command:", "",
            markdown_table([(r["shrink"], *(f"{v:.0f}" for v in r["separate_parts_s"].values())) for r in results],
                           ["shrink", *results[0]["separate_parts_s"]]), "",
            "Each candidate's agreement by both arms (same configs and seeds):", "",
            markdown_table([(r["shrink"], name, f"{a['shrink']:.3f}", "-" if a["separate"] is None else f"{a['separate']:.3f}")
                            for r in results for name, a in r["agreement"].items()],
                           ["shrink", "candidate", "shrink", "separate commands"]), ""]
    for r in results:
        text += [f"## {r['shrink']}", "", r["table"].strip(), ""]
    return "\n".join(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer Fashion-MNIST images and the ConSE teacher only")
    p.add_argument("--fmnist-fit", type=int, default=1000, help="Fashion-MNIST train images to fit on (a prefix)")
    p.add_argument("--fmnist-step", type=int, default=10, help="every STEP-th Fashion-MNIST test image is evaluated")
    p.add_argument("--threads", type=int, default=1, help="threads the exports are timed on")
    p.add_argument("--work", default=None, help="folder for homes, runs and logs (default: a temporary one)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.quick:
        args.fmnist_fit, args.fmnist_step = 300, 50
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-shrink-"))
    teachers = {"conse": CONSE} if args.quick else {"conse": CONSE, "aligned": make_aligned(work)}
    results = []
    for tname, teacher in teachers.items():
        for dname, (fit, test) in domains(args).items():
            name = f"{dname}, {tname} teacher"
            folder = work / paths.slug(f"{tname}-{dname}")
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            labels = folder / "labels.txt"
            labels.write_text("\n".join(zeroshift.dataset(test).classes) + "\n")
            print(f"{name}: shrink", flush=True)
            s = shrink_arm(teacher, fit, test, labels, CANDIDATES[tname], folder, fresh_home(work, "shrink"), args)
            print(f"{name}: separate commands", flush=True)
            sep = separate_arm(teacher, fit, test, labels, CANDIDATES[tname], s["result"], folder,
                               fresh_home(work, "separate"), args)
            results.append(summary(name, teacher, dname, s, sep))
    text = report(results, args)
    write_results(args.out, "shrink" + ("-quick" if args.quick else ""), text,
                  {"results": [{k: v for k, v in r.items() if k != "table"} for r in results],
                   "options": vars(args) | {"holdout": HOLDOUT, "seed": SEED, "distill": DISTILL}})


if __name__ == "__main__":
    main()
