"""Distill benchmark on the offline catalogue: students trained on synthetic renders or on real images.

All numbers come from one run. Teacher `conse:effnet-lite2+minilm` (image tower: EfficientNet-Lite2,
6.1M parameters); student: the built-in `student-cnn` (at most 8% of the teacher's parameters).
Training sets, of about equal size: synthetic clip-art renders made from the evaluation class names
(`synthetic:classes=fashion-mnist+tuxpaint`), and real images (a prefix of Fashion-MNIST train plus the
fit half of Tux Paint). Each loss is trained on each set with the same steps. Evaluation: Fashion-MNIST
test and the odd half of Tux Paint. Per student: accuracy (chance, 95% interval), top-1 agreement with
the teacher's zero-shot prediction, mean cosine to the teacher's image embedding, Tux caption R@5 as a
ratio of the teacher's, and images per second at batch 64 on the CPU, beside the teacher's.

    python bench/distill.py [--quick]      # --quick: fewer images, epochs and losses, for a smoke run
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from common import (
    EvalSet,
    agreement_plot,
    features,
    in_turns,
    machine,
    timed,
    write_results,
)

import zeroshift
from zeroshift.methods.distill import LOSSES, DistillConfig, distill
from zeroshift.methods.transfer import encode_prompts, vocabulary
from zeroshift.models.student import param_count
from zeroshift.models.transforms import probe_batch
from zeroshift.models.runtime import accelerate

HERE = Path(__file__).parent
TEACHER = "conse:effnet-lite2+minilm"
EVALS = ("fashion-mnist:test", "tuxpaint[1::2]")


def side_by_side(encoders: dict[str, object], batch: int = 64, repeats: int = 7) -> dict[str, float]:
    """Model-only images per second of each encoder: one preprocessed batch each, timed in turns
    (so load on the machine hits all alike), median of `repeats` after a warm-up."""
    inputs = {name: probe_batch(enc.image_transform, batch) for name, enc in encoders.items()}  # [batch, 3, H, W]
    calls = {name: (lambda enc=enc, x=inputs[name]: enc.encode_image(x)) for name, enc in encoders.items()}
    turns = in_turns(calls, repeats, warmup=1)  # the warm-up turn also creates the ONNX sessions
    return {name: batch / t.median for name, t in turns.items()}


def speeds(student_spec: str) -> dict[str, dict[str, float]]:
    """Teacher image tower (EfficientNet-Lite2) and a student run's image tower, in PyTorch and onnxruntime."""
    lite2 = zeroshift.load("effnet-lite2", runtime="torch")
    encoders = {"teacher/torch": lite2, "teacher/onnx": accelerate(lite2, "onnx"),
                "student/torch": zeroshift.load(student_spec, runtime="torch").image,
                "student/onnx": zeroshift.load(student_spec, runtime="onnx").image}
    measured = side_by_side(encoders)
    return {who: {rt: measured[f"{who}/{rt}"] for rt in ("torch", "onnx")} for who in ("teacher", "student")}


def run(args) -> dict:
    teacher = zeroshift.load(TEACHER, runtime="auto")
    texts, groups = vocabulary(None)
    vocab = encode_prompts(teacher, texts, groups, progress=False).class_weights()
    evals = [EvalSet(teacher, s, vocab) for s in EVALS]
    teacher_params = param_count(zeroshift.load("effnet-lite2", runtime="torch"))
    sets = {"synthetic": (f"synthetic:classes=fashion-mnist+tuxpaint,n={args.images},size=96",),
            "real": (f"fashion-mnist:train[:{args.images - 392}]", "tuxpaint[0::2]")}
    rows = [{"data": "-", "loss": "teacher", "params": teacher_params, **{e.spec: e.score(e.t) for e in evals}}]
    losses = args.losses or (("l2", "contrastive-text") if args.quick else LOSSES)
    work = Path(args.from_runs) if args.from_runs else Path(tempfile.mkdtemp(prefix="zeroshift-bench-distill-"))
    runs: list[str] = []
    for data_name, specs in sets.items():
        for loss in losses:
            cfg = DistillConfig(teacher=TEACHER, data=specs, out=str(work / f"{data_name}-{loss}"), student=args.student,
                                loss=loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0)
            if args.from_runs:  # score the runs an earlier invocation trained (the same configs)
                vlm = zeroshift.load(f"run:{cfg.out}", runtime="auto")
            else:
                trained = timed(lambda cfg=cfg: distill(cfg, progress=False))
                vlm = trained.result
            config = json.loads((Path(cfg.out) / "config.json").read_text())
            seconds = trained.best if not args.from_runs else config["seconds"]["total"]
            if config["options"] != {**json.loads(json.dumps(asdict(cfg))), "out": config["options"]["out"]}:
                raise SystemExit(f"{cfg.out} was trained with other options than this invocation's")
            scores = {e.spec: e.score(torch.from_numpy(_aligned(features(vlm, e.spec), e))) for e in evals}
            rows.append({"data": data_name, "loss": loss, "params": config["params"], "train_s": seconds,
                         "train_only_s": config["seconds"]["train"], **scores})
            print(f"{data_name:9s} {loss:20s} " + "  ".join(
                f"{k}: agree {v['agree']:.3f} acc {v['acc1']:.3f} cos {v['cosine']:.3f}" for k, v in scores.items())
                + f"  ({seconds:.0f} s)", flush=True)
            runs.append(cfg.out)
    return {"rows": rows, "speeds": speeds(f"run:{runs[0]}"), "runs": runs, "sets": {k: list(v) for k, v in sets.items()}, "student": args.student,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "images": args.images}


def _aligned(feats, ev: EvalSet):
    """Student features of the eval rows the teacher also has, in the teacher's row order."""
    pos = {int(i): k for k, i in enumerate(feats.index)}
    import numpy as np

    return feats.gather(np.array([pos[int(i)] for i in ev.index]))


def write(result: dict, out: Path) -> None:
    rows, teacher = result["rows"], result["rows"][0]
    sp = result["speeds"]
    head = ["data", "loss", "params"]
    for e in EVALS:
        short = "fmnist" if e.startswith("fashion") else "tux"
        head += [f"{short} acc1 [95%]", f"{short} agree", f"{short} cos"]
    head += ["tux R@5 / teacher", "train s"]
    chance = [teacher[e]["chance"] for e in EVALS]
    lines = [
        "# Distill benchmark", "",
        f"Machine: {machine()}. One run. Teacher `{TEACHER}` ({teacher['params']:,} image-tower parameters); "
        f"student `{result['student']}`; {result['epochs']} epochs, batch {result['batch_size']}, lr {result['lr']} "
        f"for every row. Training sets of {result['images']} images: synthetic = `{result['sets']['synthetic'][0]}`; "
        f"real = {' + '.join(f'`{s}`' for s in result['sets']['real'])}. Eval: `{EVALS[0]}` (chance {chance[0]:.3f}) "
        f"and `{EVALS[1]}` (chance {chance[1]:.3f}).", "",
        "agree = top-1 agreement with the teacher's zero-shot prediction over the dataset's classes; cos = mean "
        "cosine to the teacher's image embedding; R@5 = Tux caption image retrieval.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t_r5 = teacher[EVALS[1]].get("R@5")
    for r in rows:
        cells = [r["data"], r["loss"], f"{r['params']:,}"]
        for e in EVALS:
            m = r[e]
            cells += [f"{m['acc1']:.3f} [{m['acc1_lo']:.3f}, {m['acc1_hi']:.3f}]", f"{m['agree']:.3f}", f"{m['cosine']:.3f}"]
        r5 = r[EVALS[1]].get("R@5")
        cells += [f"{r5 / t_r5:.2f}" if r5 is not None and t_r5 else "-", f"{r['train_s']:.0f}" if "train_s" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    st, te = sp["student"], sp["teacher"]
    lines += ["", "Images per second, model only, batch 64, timed in turns after a warm-up (median of 7):", "",
              "| runtime | teacher (EfficientNet-Lite2) | student | student / teacher |", "|---|---|---|---|"]
    for rt in ("torch", "onnx"):
        lines.append(f"| {rt} | {te[rt]:.1f} | {st[rt]:.1f} | {st[rt] / te[rt]:.1f}x |")
    lines.append(f"| best of each | {max(te.values()):.1f} | {max(st.values()):.1f} | "
                 f"{max(st.values()) / max(te.values()):.1f}x |")
    lines += ["", *targets(rows, sp), "",
              "Notes: contrastive-text reads a text per training image: the prompt for synthetic renders, and for "
              "real images their caption or, without one, 'a photo of a {class}.' from the label. On Fashion-MNIST "
              "train that is the label itself, so the real contrastive-text row is a supervised classifier of the "
              "evaluation classes, not a zero-shot distillation (its high Fashion-MNIST accuracy, low agreement). "
              "The synthetic prompts are built from the evaluation class names, as in the paper's setting."]
    write_results(out, "distill", "\n".join(lines) + "\n", result)
    plot(rows, out / "distill.png")


def targets(rows: list[dict], sp: dict) -> list[str]:
    """The issue's targets, stated met or not from the measured rows."""
    by = {(r["data"], r["loss"]): r for r in rows}
    l2 = by.get(("synthetic", "l2"))
    contrastive = [by[k] for k in (("synthetic", "contrastive-text"), ("synthetic", "contrastive-feature")) if k in by]
    lines = ["## Targets", ""]
    if l2 and contrastive:
        for metric, name in (("agree", "agreement"), ("acc1", "accuracy")):
            wins = [l2[e][metric] > c[e][metric] for e in EVALS for c in contrastive]
            lines.append(f"- synthetic training, l2 above both contrastive losses in {name} on both real test sets: "
                         f"{'met' if all(wins) else 'not met'} ({sum(wins)} of {len(wins)} comparisons).")
    best = max((r for r in rows if r["loss"] != "teacher"), key=lambda r: r[EVALS[0]]["agree"])
    lines.append(f"- at least 0.8 top-1 agreement with the teacher on Fashion-MNIST: "
                 f"{'met' if best[EVALS[0]]['agree'] >= 0.8 else 'not met'} (best {best[EVALS[0]]['agree']:.3f}, "
                 f"{best['data']} {best['loss']}; synthetic l2 {l2[EVALS[0]]['agree']:.3f})" if l2 else "")
    ratio = max(sp["student"].values()) / max(sp["teacher"].values())
    lines.append(f"- at least 5x the teacher's images per second: {'met' if ratio >= 5 else 'not met'} ({ratio:.1f}x, "
                 "each at its fastest runtime)")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    agreement_plot(rows, EVALS, [f"{r['data']} | {r['loss']}" for r in rows], path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="student-cnn")
    p.add_argument("--images", type=int, default=4000, help="training images per set")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--losses", nargs="*", choices=LOSSES)
    p.add_argument("--quick", action="store_true", help="smoke run: 800 images, 2 epochs, l2 and contrastive-text")
    p.add_argument("--from-runs", metavar="DIR", help="score the runs an earlier invocation with the same options "
                   "left in DIR instead of training them again")
    p.add_argument("--speed-only", metavar="RUN", help="re-measure images per second against a student run folder "
                   "and rewrite the results of the last full run (its distill.json) with them")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.speed_only:
        result = json.loads((Path(args.out) / "distill.json").read_text())
        for stale in ("machine", "load_avg_1min", "date"):  # this run's, not the last full run's
            result.pop(stale, None)
        result["speeds"] = speeds(f"run:{Path(args.speed_only).resolve()}")
        write(result, Path(args.out))
        return
    if args.quick:
        args.images, args.epochs = min(args.images, 800), min(args.epochs, 2)
    write(run(args), Path(args.out))


if __name__ == "__main__":
    main()
