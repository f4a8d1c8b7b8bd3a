"""`shrink`: from a teacher, your unlabelled images and your labels to the cheapest classifier that keeps the
teacher's answers (DESIGN 3.4).

Stages, each printed as it starts, each leaving a file a rerun picks up:
1. split every data source by image, seeded, into fit and held-out parts (data specs with a split suffix,
   so each part has one feature cache that every other command shares);
2. the teacher: its embeddings of the held-out images, its label and vocabulary vectors (judge.safetensors),
   its cost and its accuracy on --eval-data (teacher/result.json);
3. each candidate: trained on the fit part by its method, scored on the held-out images against the
   teacher, evaluated on --eval-data, exported (float and int8) and timed (candidates/NAME/result.json);
4. the table, the JSON and the plot of them all, the best agreement within the budget exported with its
   labels and a model card. A rerun skips finished candidates; a new budget only chooses again.
Models are loaded one stage at a time and dropped after it, so memory stays that of the largest stage.
"""
from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .. import paths
from ..errors import NoPixelRecipe, ZeroshiftError
from ..io import write_json, write_text
from ..version import __version__
from . import report
from .candidates import candidate_list, make
from .config import Candidate, ShrinkConfig

IDENTITY = ("teacher", "data", "holdout", "seed", "templates", "transfer", "distill", "threads", "int8")


def say(text: str) -> None:
    print(f"shrink: {text}", flush=True)


def split_parts(cfg: ShrinkConfig) -> list[tuple[str, str, str]]:
    """(spec, fit spec, held spec) per data source; one-line errors for a source too small to split."""
    from ..data.split import split_images, split_spec
    from ..specs import dataset

    parts = []
    for spec in cfg.data:
        source = dataset(spec)
        split_images(len(source), cfg.holdout, cfg.seed, what=repr(spec), option="--holdout", min_fit=2)
        parts.append((spec, split_spec(spec, "fit", cfg.holdout, cfg.seed), split_spec(spec, "held", cfg.holdout, cfg.seed)))
    return parts


def check_folder(cfg: ShrinkConfig, out: Path, identity: dict) -> None:
    """Refuse an --out holding a shrink of other settings (its candidates would mix with these), unless
    --overwrite, which starts over."""
    marker = out / "shrink.json"
    if cfg.overwrite and out.exists():  # as the training commands replace a run: all of it
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())["identity"]
        except (ValueError, KeyError, OSError):
            old = None
        if old != identity:
            changed = sorted(k for k in identity if old is None or old.get(k) != identity[k])
            raise ZeroshiftError(f"--out {out} holds a shrink made with other settings ({', '.join(changed)}); "
                                 "pass --overwrite to start over, or choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise ZeroshiftError(f"--out {out} is not empty and holds no shrink; choose another --out")
    write_json(marker, {"identity": identity, "version": __version__})


def deploy(vlm_spec: str, labels: list[str], work: Path, cfg: ShrinkConfig, calibrate: str) -> dict:
    """Float and int8 exports of the model's classifier over `labels`, timed on --threads threads."""
    from ..export.quantize import Int8
    from ..export.timing import deploy_costs
    from ..specs import load

    vlm = load(vlm_spec, runtime="torch")  # exports trace PyTorch towers
    options = dict(threads=cfg.threads, int8=Int8() if cfg.int8 else None, templates=cfg.templates, calibrate=calibrate)
    try:
        try:
            return deploy_costs(vlm, labels, work, **options)
        except NoPixelRecipe:  # preprocessing with no graph form (open-nsfw's): time the float-input graph
            return deploy_costs(vlm, labels, work, input="float", **options)
    finally:
        del vlm
        gc.collect()


def evaluations(vlm, cfg: ShrinkConfig, out: Path, progress: bool) -> dict:
    """acc1 and images scored on each --eval-data spec (CLIP_benchmark records in `out`)."""
    from ..zeroshot.evaluate import evaluate

    found = {}
    for spec in cfg.eval_data:
        rec = evaluate(vlm, spec, out=out, runtime=cfg.runtime, progress=progress)
        r = rec.get("zeroshot_classification")
        if r is not None:
            found[spec] = {"acc1": r["metrics"]["acc1"], "n": int(r["zeroshift"]["evaluated"])}
    return found


def cost_of(vlm) -> dict:
    from ..models.cost import image_cost

    c = image_cost(vlm, measure_speed=False)
    return {"parameters": c["parameters"], "macs": c["macs"]}


def teacher_stage(cfg: ShrinkConfig, labels: list[str], parts, out: Path, progress: bool) -> dict:
    """The teacher's held-out embeddings and vectors (the judge), cost and evaluations."""
    from ..costcache import cached, stable_spec
    from ..data.templates import get_templates
    from ..specs import dataset, load
    from ..zeroshot.classifier import zeroshot_weights
    from ..zeroshot.prompts import encode_prompts, vocabulary
    from .score import Judge, held_embeddings, true_labels

    t0 = time.perf_counter()
    teacher = load(cfg.teacher, runtime=cfg.runtime)
    held = [dataset(h) for _, _, h in parts]
    emb, rows = held_embeddings(teacher, held, cfg.runtime, progress, role="teacher")
    weights = zeroshot_weights(teacher, labels, get_templates(cfg.templates, None), progress=False)  # [C, d]
    words, groups = vocabulary(None)
    vocab = encode_prompts(teacher, words, groups, progress).class_weights()  # [1000, d]
    judge = Judge(emb, weights.float().cpu(), vocab.float().cpu(), true_labels(held, rows, labels))
    judge.save(out / "judge.safetensors")
    write_json(out / "teacher" / "rows.json", [r.tolist() for r in rows])
    row = {"name": cfg.teacher, "label": cfg.teacher, "role": "teacher", "method": None, "spec": cfg.teacher,
           **cost_of(teacher), "scores": judge(emb), "eval": evaluations(teacher, cfg, out / "teacher" / "results", progress)}
    del teacher
    gc.collect()
    measure = lambda: deploy(cfg.teacher, labels, out / "teacher" / "export", cfg, parts[0][1])  # noqa: E731
    key = {"what": "shrink teacher export", "spec": cfg.teacher, "threads": cfg.threads, "int8": cfg.int8}
    row.update(cached(key, measure) if stable_spec(cfg.teacher) else measure())  # timed once per machine
    row["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "teacher" / "result.json", row)
    return row


def candidate_stage(cfg: ShrinkConfig, c: Candidate, labels: list[str], parts, out: Path, progress: bool) -> dict:
    """Train, score, evaluate, export and time candidate `c`; its result.json is written last."""
    from ..specs import dataset
    from .score import Judge, held_embeddings

    folder = out / "candidates" / c.folder
    t0 = time.perf_counter()
    vlm = make(cfg, c, [f for _, f, _ in parts], folder / "run", progress)
    t1 = time.perf_counter()
    rows = [np.asarray(r, dtype=np.int64) for r in json.loads((out / "teacher" / "rows.json").read_text())]
    emb, _ = held_embeddings(vlm, [dataset(h) for _, _, h in parts], cfg.runtime, progress, rows=rows, role="candidate")
    row = {"name": c.name, "label": c.name, "role": "candidate", "method": c.method, "spec": c.spec,
           "run": str(folder / "run"), **cost_of(vlm), "scores": Judge.load(out / "judge.safetensors")(emb),
           "eval": evaluations(vlm, cfg, folder / "results", progress)}
    spec = vlm.spec
    del vlm
    gc.collect()
    t2 = time.perf_counter()
    row.update(deploy(spec, labels, folder / "export", cfg, parts[0][1]))
    row["seconds"] = {"train": round(t1 - t0, 1), "score": round(t2 - t1, 1),
                      "export": round(time.perf_counter() - t2, 1)}
    write_json(folder / "result.json", row)
    return row


def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or a write a kill cut short: made again


def publish(chosen: dict | None, out: Path, labels: list[str]) -> Path | None:
    """Copy the chosen candidate's shipped export (graph and sidecar) to OUT/classifier.onnx with labels.txt;
    with no choice, remove what an earlier choice left, so nothing stale looks chosen."""
    target = out / "classifier.onnx"
    for old in (target, out / "classifier.onnx.json", out / "labels.txt", out / "README.md"):
        old.unlink(missing_ok=True)
    if chosen is None:
        return None
    src = Path(chosen[report.shipped(chosen)]["file"])
    shutil.copyfile(src.with_name(src.name + ".json"), out / "classifier.onnx.json.tmp")
    shutil.copyfile(src, out / "classifier.onnx.tmp")
    (out / "classifier.onnx.json.tmp").replace(out / "classifier.onnx.json")
    (out / "classifier.onnx.tmp").replace(target)  # the graph last: present means complete
    write_text(out / "labels.txt", "\n".join(labels) + "\n")
    return target


def shrink(cfg: ShrinkConfig, progress: bool = True) -> dict:
    """Make every candidate, score and time it, write OUT/table.md, OUT/shrink_results.json and
    OUT/tradeoff.png, and export the best agreement within the budget to OUT/classifier.onnx with a card
    (nothing when no candidate fits: the table says why). Returns the result dict written to the JSON."""
    from ..specs import dataset, require
    from ..zeroshot.classifier import check_classnames
    from ..zeroshot.labels import parse_labels

    started = time.perf_counter()
    progress = progress and not cfg.quiet
    require(cfg.teacher, "vlm", "teacher", "--teacher")
    labels = check_classnames(parse_labels(cfg.labels, files=True), at_least=2)
    chosen_list = candidate_list(cfg)
    for spec in cfg.eval_data:
        dataset(spec)  # a bad eval spec fails before the first stage
    parts = split_parts(cfg)
    out = paths.user_path(cfg.out)
    identity = {**{k: getattr(cfg, k) for k in IDENTITY}, "labels": labels}
    identity = json.loads(json.dumps(identity))  # tuples as lists, as the marker file holds them
    check_folder(cfg, out, identity)
    n = len(chosen_list) + 1
    teacher = read_result(out / "teacher" / "result.json") if (out / "judge.safetensors").is_file() else None
    if teacher is None:
        say(f"[1/{n}] teacher {cfg.teacher}: held-out embeddings, evaluation, export timing")
        teacher = teacher_stage(cfg, labels, parts, out, progress)
    else:
        say(f"[1/{n}] teacher {cfg.teacher}: done earlier")
    rows = [teacher]
    for i, c in enumerate(chosen_list, 2):
        done = read_result(out / "candidates" / c.folder / "result.json")
        say(f"[{i}/{n}] {c.name}: " + ("done earlier" if done else "train, score, export"))
        rows.append(done or candidate_stage(cfg, c, labels, parts, out, progress))
        gc.collect()
    for r in rows:
        r["in_budget"], r["why_not"] = report.within(r, cfg.budget_ms, cfg.budget_params, report.ms(teacher))
    chosen = report.choose(rows, cfg.budget_ms, cfg.budget_params)
    budget = " and ".join(([f"{cfg.budget_ms:g} ms per image"] if cfg.budget_ms else []) +
                          ([f"{cfg.budget_params:g} parameters"] if cfg.budget_params else []))
    exported = publish(chosen, out, labels)
    result = {"version": __version__, "config": json.loads(json.dumps(asdict(cfg))), "labels": labels,
              "parts": [{"data": d, "fit": f, "held": h} for d, f, h in parts], "rows": rows,
              "chosen": chosen, "budget": budget, "export": None if exported is None else str(exported),
              "seconds": round(time.perf_counter() - started, 1)}
    if chosen is None:
        why = "; ".join(f"{r['name']}: {r['why_not']}" for r in rows[1:])
        say(f"no candidate fits the budget and is faster than the teacher ({why}); the table and plot are "
            "written, nothing is exported")
    else:
        write_text(out / "README.md", report.card({**result, "teacher": teacher}))
    write_text(out / "table.md", report.table(rows, list(cfg.eval_data), chosen) + "\n")
    report.plot(rows, out / "tradeoff.png", f"shrink {cfg.teacher} on {', '.join(cfg.data)}", cfg.budget_ms)
    write_json(out / "shrink_results.json", result)
    return result


def resolved(cfg: ShrinkConfig) -> ShrinkConfig:
    """`cfg` with the default candidates spelled out (what config files record)."""
    return replace(cfg, candidates=tuple(c.name for c in candidate_list(cfg)))


__all__ = ["ShrinkConfig", "resolved", "shrink"]
