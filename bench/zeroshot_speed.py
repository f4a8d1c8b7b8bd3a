"""Zero-shot images per second of a bridged and a distilled model against their teacher, side by side in one run.

Teacher `conse:effnet-lite2+minilm`. Bridge: `zeroshift transfer --method lstsq --encoder effnet-lite0
--data "tuxpaint[0::2]"` (closed form); student: `zeroshift distill`, student-cnn, 1 epoch on
`synthetic:classes=fashion-mnist,n=256`. Both are built by this run in a temporary folder unless --bridge /
--student name run folders; their speed does not depend on how well they were trained. On the same --rows
images of Fashion-MNIST test, with its 10 class names as labels (predict's default templates):
  model   encode_image + classify (cosine to the class weights, argmax) on each model's own preprocessed
          tensors, batches of --batch-size: the model alone
  e2e     zeroshift.predict on the images saved as PNG files: decode, transform, embed the labels, encode,
          softmax, rank
The models run in turns (best of --repeats each), so load on the machine hits all alike; runtime 'auto', as a
user gets it. Both paths must give each image the same top-1 label.

    python bench/zeroshot_speed.py [--quick] [--out DIR] [--bridge RUN] [--student RUN]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import conditions, in_turns, timed, write_results

import zeroshift
from zeroshift.data.templates import get_templates
from zeroshift.methods.distill import DistillConfig, distill
from zeroshift.methods.transfer import TransferConfig, transfer
from zeroshift.models.student import param_count
from zeroshift.models.transforms import one_thread
from zeroshift.ranking import predict
from zeroshift.report import wilson_interval
from zeroshift.zeroshot.classifier import classify, zeroshot_weights

HERE = Path(__file__).parent
TEACHER = "conse:effnet-lite2+minilm"
BRIDGE = {"encoder": "effnet-lite0", "data": "tuxpaint[0::2]", "method": "lstsq"}
STUDENT = {"student": "student-cnn", "data": ("synthetic:classes=fashion-mnist,n=256",), "epochs": 1}


def build(args, work: Path) -> dict[str, dict]:
    """The three models: spec, and for a model this run trained, the seconds it took."""
    models = {"teacher": {"spec": TEACHER}}
    for name, given, make in (
            ("bridge", args.bridge, lambda out: transfer(TransferConfig(teacher=TEACHER, out=out, **BRIDGE),
                                                         progress=False)),
            ("student", args.student, lambda out: distill(DistillConfig(teacher=TEACHER, out=out, seed=0, **STUDENT),
                                                          progress=False))):
        if given:
            models[name] = {"spec": f"run:{Path(given).resolve()}"}
            continue
        models[name] = {"spec": f"run:{work / name}", "build_s": timed(make, setup=lambda n=name: str(work / n)).best}
        print(f"built the {name} in {models[name]['build_s']:.1f} s", flush=True)
    return models


def image_params(spec: str) -> dict[str, int]:
    """Parameters of the image side: the tower, and the head encode_image runs (a bridge's h, not its inverse g)."""
    vlm = zeroshift.load(spec, runtime="torch")
    if not hasattr(vlm, "image"):
        return {"tower": param_count(vlm), "head": 0}
    return {"tower": param_count(vlm.image), "head": param_count(getattr(vlm.image_head, "h", vlm.image_head))}


def runtime_of(vlm) -> str:
    return "onnxruntime" if any(getattr(m, "runs_onnx", False) for m in vlm.modules()) else "torch"


def measure(args, work: Path) -> dict:
    models = build(args, work)
    source = zeroshift.dataset(args.data)
    n = min(args.rows, len(source))
    images = [source.load_image(i) for i in range(n)]
    labels = torch.as_tensor(source.labels[:n])  # [n]
    classes = list(source.classes)
    folder = work / "images"
    folder.mkdir()
    files = [folder / f"{i:05d}.png" for i in range(n)]
    for image, path in zip(images, files):
        image.save(path)
    templates = get_templates(None, None)  # what predict uses when given no templates
    vlms = {name: zeroshift.load(m["spec"], runtime=args.runtime) for name, m in models.items()}
    model_only: dict[str, Callable[[], torch.Tensor]] = {}
    e2e: dict[str, Callable[[], list[str]]] = {}
    for name, vlm in vlms.items():
        weights = zeroshot_weights(vlm, classes, templates)  # [C, d]
        with one_thread():
            ready = torch.stack([vlm.image_transform(im) for im in images])  # [n, 3, H, W]
        batches = ready.split(args.batch_size)

        def model_pass(vlm=vlm, batches=batches, weights=weights) -> torch.Tensor:
            return torch.cat([classify(vlm.encode_image(b), weights).argmax(1) for b in batches])  # [n]

        def e2e_pass(vlm=vlm) -> list[str]:
            return [r["ranking"][0]["label"] for r in predict(vlm, files, classes, batch_size=args.batch_size)]

        classify(vlm.encode_image(batches[0]), weights)  # warm-up (ONNX session, thread pools)
        predict(vlm, files[:2], classes)
        model_only[name], e2e[name] = model_pass, e2e_pass
    print(f"timing {n} images, {args.repeats} turns", flush=True)
    model_turns, e2e_turns = in_turns(model_only, args.repeats), in_turns(e2e, args.repeats)
    preds, tops = ({name: t.result for name, t in turns.items()} for turns in (model_turns, e2e_turns))
    rows = []
    for name, m in models.items():
        pred = preds[name]
        acc = float((pred == labels).float().mean())
        lo, hi = wilson_interval(acc, n)
        same = sum(classes[int(p)] == t for p, t in zip(pred, tops[name])) / n
        rows.append({"model": name, **m, "runtime": runtime_of(vlms[name]), "params": image_params(m["spec"]),
                     "model_img_s": n / model_turns[name].best, "e2e_img_s": n / e2e_turns[name].best,
                     "acc1": acc, "acc1_lo": lo, "acc1_hi": hi,
                     "agree_teacher": float((pred == preds["teacher"]).float().mean()), "e2e_same_top1": same})
        print(f"{name:8s} model {rows[-1]['model_img_s']:8.1f} img/s  e2e {rows[-1]['e2e_img_s']:8.1f} img/s",
              flush=True)
    for r in rows:
        r["model_over_teacher"] = r["model_img_s"] / rows[0]["model_img_s"]
        r["e2e_over_teacher"] = r["e2e_img_s"] / rows[0]["e2e_img_s"]
    return {**conditions(), "rows": rows,
            "settings": {"data": args.data, "images": n, "batch_size": args.batch_size, "repeats": args.repeats,
                         "runtime": args.runtime, "labels": classes, "templates": len(templates),
                         "torch_threads": torch.get_num_threads(), "bridge": BRIDGE, "student": {
                             **STUDENT, "data": list(STUDENT["data"])}, "quick": args.quick}}


def report(r: dict) -> str:
    s = r["settings"]
    head = ["model", "spec", "runtime", "image-side params", "model img/s", "/ teacher", "e2e img/s", "/ teacher",
            f"acc1 [95%] (chance {1 / len(s['labels']):.2f})", "top-1 agreement with teacher"]
    lines = [
        "# Zero-shot speed: bridged and distilled models against their teacher"
        + (" (quick smoke run)" if s["quick"] else ""), "",
        (f"Machine: {r['machine']}; 1-min load average {r['load_avg_1min'][0]:.1f} at the start, "
        f"{r['load_avg_1min'][1]:.1f} at the end (the machine is shared: other work shows in every figure, "
        "alike for the three models since they ran in turns). One run; every figure below was measured in it."), "",
        (f"The same {s['images']} images of `{s['data']}`, labels = its {len(s['labels'])} class names "
        f"({s['templates']} template(s)), batch {s['batch_size']}, runtime `{s['runtime']}`, best of {s['repeats']} "
        "turns. *model* = encode_image + classify on preprocessed tensors; *e2e* = `zeroshift.predict` on PNG "
        "files (decode, transform, label embedding, encode, softmax)."), "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in r["rows"]:
        p = m["params"]
        params = f"{p['tower']:,}" + (f" + {p['head']:,}" if p["head"] else "")
        spec = "a run built here" if "build_s" in m else f"`{m['spec']}`"
        lines.append(f"| {m['model']} | {spec} | {m['runtime']} | {params} | {m['model_img_s']:.1f} | "
                     f"{m['model_over_teacher']:.1f}x | {m['e2e_img_s']:.1f} | {m['e2e_over_teacher']:.1f}x | "
                     f"{m['acc1']:.3f} [{m['acc1_lo']:.3f}, {m['acc1_hi']:.3f}] | {m['agree_teacher']:.3f} |")
    built = [f"{m['model']} {m['build_s']:.0f} s" for m in r["rows"] if "build_s" in m]
    same = ", ".join(f"{m['model']} {m['e2e_same_top1']:.3f}" for m in r["rows"])
    b, st = s["bridge"], s["student"]
    lines += [
        "", f"Bridge: `zeroshift transfer --method {b['method']} --encoder {b['encoder']} --data \"{b['data']}\"`; "
        f"student: `zeroshift distill --student {st['student']} --epochs {st['epochs']} --data {st['data'][0]}`"
        + (f" (built by this run: {', '.join(built)})" if built else " (given run folders)")
        + ". The student is barely trained and the bridge is fit on Tux Paint alone: accuracy and agreement are "
        "context here, the speed is the figure (distill.md and transfer.md score trained ones).",
        "Image-side params: the image tower + the head encode_image runs (a bridge's map h; its inverse g is not "
        "run). Share of images whose e2e top-1 label equals the model path's: " + same + ".", "",
        "Produced by `python bench/zeroshot_speed.py" + (" --quick" if s["quick"] else "") + "`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist:test")
    p.add_argument("--rows", type=int, default=2048, help="images to classify")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="turns of the three models; the best of each counts")
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--bridge", metavar="RUN", help="an existing bridge run folder instead of building one")
    p.add_argument("--student", metavar="RUN", help="an existing student run folder instead of building one")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 images, 2 turns")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.quick:
        args.rows, args.repeats = min(args.rows, 256), min(args.repeats, 2)
    with tempfile.TemporaryDirectory(prefix="zeroshift-bench-zeroshot-speed-") as tmp:
        result = measure(args, Path(tmp))
    write_results(args.out, "zeroshot_speed", report(result), result)


if __name__ == "__main__":
    main()
