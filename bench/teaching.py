"""Teaching benchmark (issue 14): consistent, patient teaching on view caches, for distill and transfer.

One run, two teachers: `conse:effnet-lite2+minilm`, and a CLIP-like VLM that `align` makes from
EfficientNet-Lite2 and MiniLM (whose image space is a linear map of its tower). Two domains, each with
its own unlabelled fit images: Fashion-MNIST train images for Fashion-MNIST test; the even half of Tux
Paint plus OpenClipart for the odd half of Tux Paint. Each row is one training run scored on the test
set of its domain (never trained or selected on): top-1 agreement with the teacher over the dataset's
classes, accuracy against the teacher's, mean cosine to the teacher's embedding. Rows: inconsistent
(student-side crops of the plain image) against consistent (cached views), K = 1 / 4 / 16 views at equal
student steps, a long schedule, three student widths, the teacher tower's first pretrained blocks as a
student, synthetic-only students under l2 and both contrastive losses, and bridges (linear, mlp) with and
without views, on many more fit images, from other source encoders and with the class names as prompts.
Every finished row is kept in the work folder, so a rerun with the same options continues where it stopped.

    python bench/teaching.py [--quick] [--work DIR] [--only distill|labels|trunk|extra|synthetic|transfer|aligned|bridges]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from PIL import Image
from common import EvalSet, features, in_turns, write_results
from speed import model_only_rate
from teaching_rows import CONSE, STUDENT, bridge_rows, distill_rows, domains, extra_rows, labels_rows, trunk_rows

import zeroshift
from zeroshift.compose import build_student
from zeroshift.methods.config import AlignConfig, DistillConfig, TransferConfig
from zeroshift.models.runtime import accelerate
from zeroshift.models.student import param_count
from zeroshift.models.transforms import probe_batch
from zeroshift.specs import dataset
from zeroshift.zeroshot.prompts import encode_prompts, vocabulary

HERE = Path(__file__).parent


def class_names(spec: str) -> str:
    """The test set's class names, one per line (the `--labels` a user of that domain would give)."""
    return "\n".join(dataset(spec).classes)


def class_prompts(bench: "Bench", spec: str) -> str:
    """A transfer `--prompts` file of the test set's class names, one 'a photo of a {name}.' per class."""
    path = bench.work / f"prompts-{spec.replace('/', '-')}.txt"
    path.write_text("".join(f"a photo of a {name}.\n" for name in class_names(spec).splitlines()))
    return str(path)


class Bench:
    def __init__(self, args) -> None:
        self.args, self.work = args, Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.done_path = self.work / "rows.json"
        self.done = json.loads(self.done_path.read_text()) if self.done_path.exists() else {}
        self.evals: dict[tuple[str, str], EvalSet] = {}
        self.missing: list[str] = []

    def eval_set(self, teacher_spec: str, spec: str) -> EvalSet:
        if (teacher_spec, spec) not in self.evals:
            teacher = zeroshift.load(teacher_spec, runtime="auto")
            words, groups = vocabulary(None)
            vocab = encode_prompts(teacher, words, groups, progress=False).class_weights()
            self.evals[teacher_spec, spec] = EvalSet(teacher, spec, vocab)
        return self.evals[teacher_spec, spec]

    def score(self, vlm, teacher_spec: str, spec: str) -> dict:
        ev = self.eval_set(teacher_spec, spec)
        f = features(vlm, spec)
        pos = {int(i): k for k, i in enumerate(f.index)}
        z = torch.from_numpy(f.gather([pos[int(i)] for i in ev.index]))  # [N, d] in the teacher's row order
        return ev.score(z)

    def row(self, key: str, make) -> dict | None:
        """The finished row `key`, or make() it (train, score) and keep it (None with --report: not run)."""
        if key not in self.done and self.args.report:
            self.missing.append(key)
            return None
        if key not in self.done:
            self.done[key] = make()
            self.done_path.write_text(json.dumps(self.done, indent=1))
            r = self.done[key]
            print(f"{key}: agree {r['agree']:.3f} acc {r['acc1']:.3f} cos {r['cosine']:.3f} ({r['train_s']:.0f} s)",
                  flush=True)
        return self.done[key]

    def distilled(self, teacher: str, key: str, domain: dict, **options) -> dict:
        out = self.work / "runs" / key.replace(" ", "_").replace("/", "-").replace(",", "")

        def make() -> dict:
            cfg = DistillConfig(teacher=teacher, data=domain["fit"], out=str(out), overwrite=True, seed=0,
                                quiet=True, **{"student": STUDENT, "batch_size": self.args.batch_size, **options})
            vlm = zeroshift.distill(config=cfg)
            config = json.loads((out / "config.json").read_text())
            steps_images = config["rows"] * config["train"]["epochs"]
            tests = domain["test"] if isinstance(domain["test"], list) else [domain["test"]]
            scores = {t: self.score(vlm, teacher, t) for t in tests}
            return {**(scores[tests[0]] if len(tests) == 1 else {"scores": scores, **scores[tests[0]]}),
                    "params": config["params"],
                    "train_s": config["seconds"]["train"], "prepare_s": config["seconds"]["prepare"],
                    "train_images_per_s": steps_images / max(config["seconds"]["train"], 1e-9),
                    "epochs": config["train"]["epochs"], "rows": config["rows"],
                    "kept": config["holdout"]["kept"], "run": str(out)}

        return self.row(key, make)

    def bridged(self, teacher: str, key: str, domain: dict, **options) -> dict:
        out = self.work / "runs" / key.replace(" ", "_").replace("/", "-").replace(",", "")

        def make() -> dict:
            cfg = TransferConfig(teacher=teacher, data=domain["fit"], out=str(out), overwrite=True, quiet=True,
                                 **{"encoder": self.args.encoder, **options})
            vlm = zeroshift.transfer(config=cfg)
            config = json.loads((out / "config.json").read_text())
            return {**self.score(vlm, teacher, domain["test"]), "params": None,
                    "train_s": config["seconds"]["fit"], "run": str(out),
                    "selection": config.get("holdout")}

        return self.row(key, make)


def aligned_teacher(bench: Bench) -> str:
    """The CLIP-like teacher: `align` of EfficientNet-Lite2 and MiniLM on Tux Paint's even half and OpenClipart."""
    out = bench.work / "aligned-teacher"
    if bench.args.report and not (out / "config.json").exists():
        return "run:missing"  # --report: its rows are missing too
    if not (out / "config.json").exists():
        zeroshift.align(config=AlignConfig(image="effnet-lite2", text="minilm", data=("tuxpaint[0::2]", bench.args.clipart),
                                           out=str(out), epochs=50, batch_size=128, overwrite=True, quiet=True))
    return f"run:{out}"


def mirrored(teacher_spec: str, ev: EvalSet, batch: int = 64) -> dict:
    """The teacher scored against itself on its test images mirrored left-right: how far its own answer moves
    under a change it should ignore, a yardstick for the agreement a close imitation can reach."""
    teacher = zeroshift.load(teacher_spec, runtime="auto")
    rows = [int(i) for i in ev.index]
    parts = []
    for start in range(0, len(rows), batch):
        images = [ev.source.load_image(i).transpose(Image.Transpose.FLIP_LEFT_RIGHT) for i in rows[start:start + batch]]
        parts.append(teacher.encode_image(torch.stack([teacher.image_transform(im) for im in images])).float())
    return ev.score(torch.cat(parts))  # [N, d] scored in the teacher's row order


def speeds(student_runs: list[str]) -> dict[str, float]:
    """Images per second at batch 32 of the teacher's image tower and of the students, each at its fastest
    runtime (onnxruntime here), timed in turns."""
    lite2 = zeroshift.load("effnet-lite2", runtime="torch")
    encoders = {"teacher": accelerate(lite2, "onnx")}
    for run in student_runs:
        encoders[run] = zeroshift.load(f"run:{run}", runtime="onnx").image
    inputs = {name: probe_batch(enc.image_transform, 32) for name, enc in encoders.items()}  # [32, 3, H, W]
    turns = in_turns({n: (lambda e=e, x=inputs[n]: e.encode_image(x)) for n, e in encoders.items()}, 5, warmup=1)
    return {name: 32 / t.median for name, t in turns.items()}


def run(args) -> dict:
    bench = Bench(args)
    doms = domains(args)
    rows: list[dict] = []

    def add(res: dict | None, **row) -> None:
        if res is not None:
            rows.append({**row, **res})

    if args.only in (None, "distill", "extra", "labels", "trunk"):
        plan = {"distill": distill_rows(args), "labels": labels_rows(args), "extra": extra_rows(args),
                "trunk": trunk_rows(args)}.get(args.only, distill_rows(args) + labels_rows(args) + trunk_rows(args)
                                               + ([] if args.quick else extra_rows(args)))
        for r in plan:
            opts = {k: v for k, v in r.items() if k not in ("row", "domain", "fit", "labels")}
            if r.get("labels"):
                opts["labels"] = class_names(doms[r["domain"]]["test"])
            dom = {**doms[r["domain"]], **({"fit": r["fit"]} if "fit" in r else {})}
            add(bench.distilled(CONSE, f"conse {r['domain']} {r['row']}", dom, **opts),
                teacher="conse", kind="student", **{k: v for k, v in r.items() if k != "fit"})
    if args.only in (None, "synthetic"):
        synth = (f"synthetic:classes=fashion-mnist+tuxpaint,n={args.synthetic},size=96",)
        for loss in ("l2", "contrastive-text", "contrastive-feature"):  # one student per loss, scored on both domains
            tests = [doms[d]["test"] for d in ("fmnist", "tux")]
            res = bench.distilled(CONSE, f"conse synthetic {loss}", {"fit": synth, "test": tests}, views=1, loss=loss,
                                  holdout=0.0, epochs=args.epochs)
            for d, test in zip(("fmnist", "tux"), tests):
                if res is not None:
                    add({**{k: v for k, v in res.items() if k != "scores"}, **res["scores"][test]},
                        teacher="conse", kind="synthetic", row=f"synthetic only, {loss}", domain=d)
    if args.only in (None, "transfer", "aligned"):
        names = {"transfer": ("conse",), "aligned": ("aligned",)}.get(args.only, ("conse", "aligned"))
        for name in names:
            spec = CONSE if name == "conse" else aligned_teacher(bench)
            for d in ("fmnist", "tux"):
                for bridge in ("linear", "mlp"):
                    for k in (1, args.views):
                        add(bench.bridged(spec, f"{name} {d} bridge {bridge} K={k}", doms[d], bridge=bridge, views=k),
                            teacher=name, kind="bridge", row=f"{args.encoder} {bridge} bridge, K={k}", domain=d)
    if args.only in (None, "bridges"):
        aligned = aligned_teacher(bench)
        for r in bridge_rows(args):
            opts = {k: v for k, v in r.items() if k not in ("row", "domain", "fit", "prompts", "check")}
            if r.get("prompts"):
                opts["prompts"] = class_prompts(bench, doms[r["domain"]]["test"])
            dom = {**doms[r["domain"]], **({"fit": r["fit"]} if "fit" in r else {})}
            add(bench.bridged(aligned, f"aligned {r['domain']} {r['row']}", dom, **opts), teacher="aligned",
                kind="bridge", **{k: v for k, v in r.items() if k not in ("fit", "prompts")})
    used = {r["teacher"] for r in rows} or {"conse"}
    specs = {"conse": CONSE, **({"aligned": aligned_teacher(bench)} if "aligned" in used else {})}
    teacher_rows: dict[str, dict] = {d: {} for d in doms}
    for name in (n for n in ("conse", "aligned") if n in used):
        for d, dom in doms.items():
            ev = bench.eval_set(specs[name], dom["test"])
            teacher_rows[d][name] = ev.score(ev.t)
            if not args.no_mirror:
                teacher_rows[d][name]["mirrored"] = mirrored(specs[name], ev)
    students = [r["run"] for r in rows if r["kind"] == "student"]
    rates = {}  # the naive model-only training rate of each student spec (default layout), as the loop's yardstick
    if not args.no_speed:
        for spec in sorted({r.get("student", STUDENT) for r in rows if r["kind"] in ("student", "synthetic")}):
            rates[spec] = model_only_rate(build_student(spec, 384), args.batch_size)
    return {"rows": rows, "teachers": teacher_rows, "missing": bench.missing, "model_only_rates": rates,
            "speeds": speeds(sorted(set(students))) if students and not args.no_speed else {}, "options": vars(args),
            "teacher_params": param_count(zeroshift.load("effnet-lite2", runtime="torch"))}


def write(result: dict, out: Path) -> None:
    rows, sp, opts = result["rows"], result["speeds"], result["options"]
    tp = result["teacher_params"]
    lines = ["# Teaching benchmark", "",
             f"Teachers: `{CONSE}` ({tp:,} image-tower parameters) and `aligned`, an `align` VLM of EfficientNet-Lite2 "
             f"+ MiniLM trained on `tuxpaint[0::2]` + `{opts['clipart']}`. Fit images, never their labels: "
             f"`fashion-mnist:train[:{opts['fmnist']}]` for `{opts['fmnist_test']}`; `tuxpaint[0::2]` + "
             f"`{opts['clipart']}` for `tuxpaint[1::2]`. Students: distill defaults (l2, batch {opts['batch_size']}, "
             f"AdamW 3e-3, cosine, held-out 0.1 of the fit images chosen by agreement); short rows have equal "
             f"student steps ({opts['epochs']} epochs of the plain images); views from the default recipe. "
             f"Bridges: `{opts['encoder']}`, transfer defaults.", "",
             "agree = top-1 agreement with the teacher over the test set's classes; acc / teacher = accuracy as a "
             "share of the teacher's; img/s = inference at batch 32, each at its fastest runtime (onnxruntime), "
             "against the teacher's image tower; train img/s = training images per second of the whole loop (in brackets: "
             "against the student's naive model-only forward+backward+step rate on ready tensors at the same batch, "
             "bench/speed.py, measured at the end of the run; training ran beside other jobs, see the load below); "
             "held out = the label-free score that kept the student's epoch: top-1 agreement with the teacher over "
             "the 1000 ImageNet names (or a bridge's prompts) on the held-out fit images, the only score any choice here is "
             "made on.", ""]
    for d in ("fmnist", "tux"):
        accs = ", ".join(f"{name} teacher acc1 {v['acc1']:.3f} [{v['acc1_lo']:.3f}, {v['acc1_hi']:.3f}]"
                         for name, v in result["teachers"][d].items())
        lines += [f"## {d}: {accs}", ""]
        for name, v in result["teachers"][d].items():
            if v.get("mirrored"):
                m = v["mirrored"]
                lines += [f"Yardstick: the {name} teacher on the same test images mirrored left-right agrees with "
                          f"itself on {m['agree']:.3f} of them (cos {m['cosine']:.3f} to its own embeddings).", ""]
        lines += ["| teacher | row | params | img/s vs teacher | agree | held out | acc1 [95%] | acc / teacher | cos "
                  "| train img/s | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["domain"] == d):
            speed = sp.get(r.get("run", ""), None) if r["kind"] == "student" else None
            ratio = f"{speed / sp['teacher']:.1f}x" if speed and sp.get("teacher") else "-"
            teacher_acc = result["teachers"][d].get(r["teacher"], {}).get("acc1")
            keep = f"{r['acc1'] / teacher_acc:.2f}" if teacher_acc else "-"
            params = f"{r['params']:,}" if r.get("params") else "-"
            tis = f"{r['train_images_per_s']:.0f}" if r.get("train_images_per_s") else "-"
            rate = result.get("model_only_rates", {}).get(r.get("student", STUDENT)) if r["kind"] != "bridge" else None
            tis += f" ({r['train_images_per_s'] / rate:.2f}x)" if rate and r.get("train_images_per_s") else ""
            held = "-" if (h := held_score(r)) is None else f"{h:.3f}"
            lines.append(f"| {r['teacher']} | {r['row']} | {params} | {ratio} | {r['agree']:.3f} | {held} | {r['acc1']:.3f} "
                         f"[{r['acc1_lo']:.3f}, {r['acc1_hi']:.3f}] | {keep} | {r['cosine']:.3f} | {tis} | {r['train_s']:.0f} |")
        lines.append("")
    if result.get("missing"):
        lines += ["Not run in this invocation (no finished row in the work folder): " + "; ".join(result["missing"]), ""]
    lines += targets(result)
    write_results(out, opts.get("name", "teaching"), "\n".join(lines) + "\n", result)


def held_score(row: dict) -> float | None:
    """The label-free held-out agreement that kept a student's epoch or a bridge's fit (None: no split)."""
    if row["kind"] != "bridge":
        return (row.get("kept") or {}).get("kept_score")
    sel = row.get("selection") or {}
    return (sel.get("kept") or sel.get("closed_form") or {}).get("agreement")


def targets(result: dict) -> list[str]:
    """The issue's targets, met or not, from the measured rows."""
    rows, sp, tp = result["rows"], result["speeds"], result["teacher_params"]
    out = ["## Targets", ""]
    by_spec: dict[str, list[float]] = {}  # one architecture, one speed: the median over its runs (timing noise)
    for r in rows:
        if r["kind"] == "student" and r["run"] in sp:
            by_spec.setdefault(r.get("student", STUDENT), []).append(sp[r["run"]])
    speed = {k: statistics.median(v) for k, v in by_spec.items()}
    small = [r for r in rows if r["kind"] == "student" and r["params"] <= 0.1 * tp
             and speed.get(r.get("student", STUDENT), 0) >= 10 * sp.get("teacher", float("inf"))]
    for spec, v in speed.items():
        out.append(f"- {spec}: {v / sp['teacher']:.1f}x the teacher's images per second (median over its "
                   f"{len(by_spec[spec])} runs; {min(by_spec[spec]) / sp['teacher']:.1f}x-{max(by_spec[spec]) / sp['teacher']:.1f}x)")
    for d, want in (("fmnist", 0.8), ("tux", 0.6)):
        cands = [r for r in small if r["domain"] == d and r["teacher"] == "conse"]
        best = max(cands, key=lambda r: r["agree"], default=None)
        out.append(f"- {d}: a student with <= 10% of the teacher's parameters and >= 10x its images/s agrees on >= {want}: "
                   + ("no such student measured" if best is None else
                      f"{'met' if best['agree'] >= want else 'not met'} (best {best['agree']:.3f}, {best['row']})"))
    fm = [r for r in small if r["domain"] == "fmnist" and r["teacher"] == "conse"]
    if fm:
        best = max(fm, key=lambda r: r["agree"])
        gap = result["teachers"]["fmnist"]["conse"]["acc1"] - best["acc1"]
        out.append(f"- fmnist accuracy within 0.02 of the teacher's: {'met' if abs(gap) <= 0.02 else 'not met'} "
                   f"(gap {gap:+.3f}, {best['row']})")
    syn = {(r["row"], r["domain"]): r for r in rows if r["kind"] == "synthetic"}
    for d in ("fmnist", "tux"):
        l2 = syn.get(("synthetic only, l2", d))
        other = [syn.get((f"synthetic only, {c}", d)) for c in ("contrastive-text", "contrastive-feature")]
        if l2 and all(other):
            worst = max(o["agree"] for o in other)
            out.append(f"- {d}: synthetic-only l2 at least 2x the agreement of both contrastive losses: "
                       f"{'met' if l2['agree'] >= 2 * worst else 'not met'} (l2 {l2['agree']:.3f}, best contrastive {worst:.3f})")
    for d in ("fmnist", "tux"):
        br = [r for r in rows if r["kind"] == "bridge" and r["teacher"] == "aligned" and r["domain"] == d
              and not r.get("check")]
        if br:
            best = max(br, key=lambda r: r["agree"])
            out.append(f"- {d}: a bridge into the aligned teacher agrees on >= 0.9: "
                       f"{'met' if best['agree'] >= 0.9 else 'not met'} (best {best['agree']:.3f}, {best['row']})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fmnist", type=int, default=2000, help="Fashion-MNIST train images to fit on")
    p.add_argument("--fmnist-test", default="fashion-mnist:test")
    p.add_argument("--clipart", default="openclipart[::4]", help="the OpenClipart part of the Tux Paint fit data")
    p.add_argument("--many", type=int, default=12, help="Fashion-MNIST fit images of the trunk's data row, as a "
                   "multiple of --fmnist")
    p.add_argument("--clipart-all", default="openclipart", help="the OpenClipart part of the trunk's Tux Paint data row")
    p.add_argument("--synthetic", type=int, default=2000, help="synthetic renders for the synthetic-only rows")
    p.add_argument("--epochs", type=int, default=16, help="epochs of the short K=1 rows (K views: epochs / K)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--long", type=int, default=4, help="the long schedule, as a multiple of the short one")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--encoder", default="effnet-lite0", help="the bridges' source encoder")
    p.add_argument("--only", choices=("distill", "labels", "trunk", "extra", "synthetic", "transfer", "aligned",
                                             "bridges"))
    p.add_argument("--report", action="store_true", help="train nothing: write the rows the work folder holds")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-mirror", action="store_true", help="skip the teacher-on-mirrored-images reference")
    p.add_argument("--quick", action="store_true", help="smoke run: few images and epochs")
    p.add_argument("--work", default=None, help="folder for runs and finished rows (default: a new temp folder)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="teaching", help="results file name, e.g. teaching-extra for --only extra")
    args = p.parse_args()
    if args.quick:
        args.fmnist, args.synthetic, args.epochs, args.long = 200, 200, 4, 2
        args.clipart, args.fmnist_test, args.clipart_all = "openclipart[:100]", "fashion-mnist:test[::50]", "openclipart[:300]"
    args.work = args.work or tempfile.mkdtemp(prefix="zeroshift-bench-teaching-")
    write(run(args), Path(args.out))


if __name__ == "__main__":
    main()
