"""Align (OTTER) benchmark on the offline catalogue: contrastive losses under caption noise, and Sinkhorn's cost.

All numbers come from one run. Towers: `effnet-lite2` (image) and `minilm` (text), locked mode, heads into a
256-d joint space, trained on `openclipart` (captions from paths, noisy by nature) + `tuxpaint[0::2]`.
Main grid: caption noise 0.0 / 0.3 / 0.6 x losses infonce, ls, kd, ot, with equal compute (same epochs,
batch, lr, seed); extra rows at noise 0.3 probe where OT might help (alpha, EMA similarities, lambda,
batch 128). Every aligned VLM is evaluated zero-shot on `fashion-mnist:test` (classification) and on the
held-out `tuxpaint[1::2]` (classification, caption retrieval R@1/R@5 both ways), beside the offline ConSE
teacher `conse:effnet-lite2+minilm`. Eval features: effnet-lite2 and MiniLM features of each eval set are
computed once and each run's heads map them (checked once against the run VLM's own encoders). Last, the
training step of the ot loss at batch 512 is timed and the share of Sinkhorn in it measured.

    python bench/align.py [--quick]      # --quick: noise 0.3, infonce and ot, 3 epochs, for a smoke run
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import CallTimer, TowerEvalSet, machine, timed, vlm_scores, write_results

import zeroshift
from zeroshift.methods import losses as losses_module
from zeroshift.methods import sinkhorn as sinkhorn_module
from zeroshift.methods.align import (
    AlignConfig,
    AlignTask,
    align,
    build_rows,
    collect_pairs,
)
from zeroshift.compose import tower
from zeroshift.models.aligned import Heads

HERE = Path(__file__).parent
IMAGE, TEXT, TEACHER = "effnet-lite2", "minilm", "conse:effnet-lite2+minilm"
PAIRS = ("openclipart", "tuxpaint[0::2]")
EVALS = ("fashion-mnist:test", "tuxpaint[1::2]")
NOISES = (0.0, 0.3, 0.6)
LOSSES = ("infonce", "ls", "kd", "ot")
EXTRA_NOISE = 0.3
EXTRAS = (  # (row name, AlignConfig overrides), all at EXTRA_NOISE
    ("ot alpha 0.8", {"loss": "ot", "alpha": 0.8}),
    ("ot similarity ema", {"loss": "ot", "similarity": "ema"}),
    ("ot lam 0.05", {"loss": "ot", "lam": 0.05}),
    ("infonce batch 128", {"loss": "infonce", "batch_size": 128}),
    ("ot batch 128", {"loss": "ot", "batch_size": 128}),
    ("ot ema 0.99", {"loss": "ot", "ema": 0.99}),  # EMA horizon ~100 steps, not ~1000: a run has a few hundred
)
TIMED_BATCH = 512


def config(args, out: Path, **opts) -> AlignConfig:
    """The benchmark's AlignConfig: fixed towers, pairs, dim and schedule; `opts` override loss options."""
    base = {"dim": 256, "mode": "locked", "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": 0}
    return AlignConfig(image=IMAGE, text=TEXT, data=PAIRS, out=str(out), **{**base, **opts})


def train_row(args, work: Path, name: str, evals: list[TowerEvalSet], noise: float, check: bool, **opts) -> dict:
    """Train one aligned VLM and score it zero-shot on every eval set."""
    cfg = config(args, work / f"{name.replace(' ', '-')}-noise{noise:g}", noise=noise, **opts)
    load = os.getloadavg()[0]
    trained = timed(lambda: align(cfg, progress=False))
    vlm, wall = trained.result, trained.best
    run = json.loads((Path(cfg.out) / "config.json").read_text())
    row = {"row": name, "noise": noise, "loss": cfg.loss, "options": opts, "batch_size": cfg.batch_size,
           "steps": run["train"]["steps"], "train_s": run["seconds"]["train"], "wall_s": wall, "load1": load,
           "logit_scale": run["logit_scale"], "pairs": run["rows"], "replaced": run["noise"]["replaced"],
           **{e.spec: e.score(vlm) for e in evals}}
    if check:
        row["check"] = {e.spec: e.check(vlm) for e in evals}
    t = row[EVALS[1]]
    print(f"noise {noise:.1f} {name:18s} fmnist {row[EVALS[0]]['acc1']:.3f}  tux {t['acc1']:.3f}  "
          f"i2t R@1/5 {t['i2t_R@1']:.3f}/{t['i2t_R@5']:.3f}  t2i R@1/5 {t['t2i_R@1']:.3f}/{t['t2i_R@5']:.3f}  "
          f"({row['train_s']:.1f} s train, {wall:.0f} s in all, load {load:.1f})", flush=True)
    return row


def _stepper(args, loss: str) -> tuple[Callable[[], dict], Callable[[dict], None]]:
    """(next batch, one step): the batches of TIMED_BATCH cached pairs and a training step of `loss` on one
    (as the loop does it: step, backward, gradient clipping, AdamW, EMA update)."""
    cfg = config(args, Path("unused"), loss=loss, batch_size=TIMED_BATCH)
    pairs = collect_pairs([zeroshift.dataset(s) for s in PAIRS], cfg.noise, cfg.seed)
    image_tower, text_tower = tower(IMAGE, "image", cfg.runtime), tower(TEXT, "text")
    rows, _ = build_rows(cfg, pairs, image_tower, text_tower, progress=False)
    torch.manual_seed(0)
    task = AlignTask(cfg, Heads(image_tower.dim, text_tower.dim, cfg.dim)).train()
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = (b for epoch in itertools.count() for b in rows.batches(TIMED_BATCH, 0)(epoch)
               if len(b["caption"]) == TIMED_BATCH)

    def one_step(batch: dict) -> None:
        terms, _ = task.step(batch)
        loss_value = torch.stack(list(terms.values())).sum()
        optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        task.after_step()

    return lambda: next(batches), one_step


def step_times(args, steps: int, threads: list[int], warmup: int = 5) -> dict:
    """Training-step time of ot (and infonce) at batch TIMED_BATCH on cached features, and the time of the
    two ot_soft_labels calls and of the two sinkhorn calls inside the ot step; medians over `steps` steps,
    at each torch thread count in `threads` (the run's own setting is restored after)."""
    own = torch.get_num_threads()
    steppers = {loss: _stepper(args, loss) for loss in ("ot", "infonce")}
    out = {"batch": TIMED_BATCH, "steps": steps, "warmup": warmup, "threads": own, "runs": []}
    try:
        for n in threads:
            torch.set_num_threads(n)
            res = {"threads": n, "load1": os.getloadavg()[0]}
            for loss, (next_batch, one_step) in steppers.items():  # the batch is fetched outside the clock
                clean = timed(one_step, steps, warmup, setup=next_batch).seconds
                res[loss] = {"step_ms": 1e3 * statistics.median(clean), "step_ms_all": [1e3 * s for s in clean]}
            soft, sink, timed_steps = [], [], []
            next_batch, ot_step = steppers["ot"]
            for _ in range(steps):
                with CallTimer(losses_module, "ot_soft_label_pair") as a, CallTimer(sinkhorn_module, "sinkhorn") as s:
                    timed_steps.append(timed(ot_step, setup=next_batch).best)
                soft.append(sum(a.seconds))
                sink.append(sum(s.seconds))
            res["ot"].update({  # shares: median over steps of (part / that same step), robust to load swings
                "step_ms_instrumented": 1e3 * statistics.median(timed_steps),
                "ot_soft_labels_ms": 1e3 * statistics.median(soft), "sinkhorn_ms": 1e3 * statistics.median(sink),
                "ot_soft_labels_share": statistics.median(a / t for a, t in zip(soft, timed_steps)),
                "sinkhorn_share": statistics.median(b / t for b, t in zip(sink, timed_steps)),
                "ot_soft_labels_ms_all": [1e3 * a for a in soft], "sinkhorn_ms_all": [1e3 * b for b in sink],
                "step_ms_instrumented_all": [1e3 * t for t in timed_steps]})
            out["runs"].append(res)
            step = res["ot"]["step_ms"] / 1e3
            print(f"timing at batch {TIMED_BATCH}, {n} thread(s): ot step {1e3 * step:.1f} ms, ot_soft_label_pair "
                  f"{res['ot']['ot_soft_labels_ms']:.2f} ms ({100 * res['ot']['ot_soft_labels_share']:.1f}%), "
                  f"sinkhorn {res['ot']['sinkhorn_ms']:.2f} ms ({100 * res['ot']['sinkhorn_share']:.1f}%); infonce "
                  f"step {res['infonce']['step_ms']:.1f} ms", flush=True)
    finally:
        torch.set_num_threads(own)
    return out


def run(args) -> dict:
    loads = {"start": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="zeroshift-bench-align-"))
    image_tower, text_tower = tower(IMAGE, "image", "auto"), tower(TEXT, "text")
    evals = [TowerEvalSet(image_tower, text_tower, s) for s in EVALS]
    teacher = zeroshift.load(TEACHER, runtime="auto")
    teacher_row = {"row": "teacher", "noise": None, "loss": "-", **{e.spec: vlm_scores(teacher, e.spec) for e in evals}}
    for e in evals:
        if not np.array_equal(zeroshift.embed(teacher, e.spec, progress=False).index, e.index):
            raise zeroshift.ZeroshiftError(f"{e.spec}: the teacher's cache and effnet-lite2's hold different rows")
    print("teacher: " + "  ".join(f"{k}: {v}" for k, v in teacher_row.items() if k in EVALS), flush=True)
    noises, losses = ((EXTRA_NOISE,), ("infonce", "ot")) if args.quick else (NOISES, LOSSES)
    rows = []
    for noise in noises:
        for loss in losses:
            rows.append(train_row(args, work, loss, evals, noise, check=not rows, loss=loss))
    extras = [] if args.quick else [train_row(args, work, name, evals, EXTRA_NOISE, False, **opts)
                                     for name, opts in EXTRAS]
    timing = step_times(args, args.timing_steps, sorted({torch.get_num_threads(), os.cpu_count() or 1}))
    loads["end"] = os.getloadavg()
    return {"settings": {"image": IMAGE, "text": TEXT, "pairs": list(PAIRS), "evals": list(EVALS), "dim": 256,
                         "mode": "locked", "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                         "seed": 0, "defaults": {k: getattr(config(args, Path("unused")), k) for k in
                                                 ("alpha", "lam", "sinkhorn_iters", "kd_temperature", "ema",
                                                  "similarity", "weight_decay", "warmup")},
                         "threads": torch.get_num_threads(), "threads_set": bool(args.threads),
                         "quick": args.quick, "work": str(work)},
            "teacher": teacher_row, "rows": rows, "extras": extras, "timing": timing, "loads": loads,
            "eval_rows": {e.spec: len(e.index) for e in evals},
            "eval_captions": {e.spec: None if e.texts is None else len(e.texts) for e in evals}}


# ---------------------------------------------------------------- report
def _r5(m: dict) -> float:
    """The summary retrieval number: Tux caption R@5, mean of image->text and text->image."""
    return (m["i2t_R@5"] + m["t2i_R@5"]) / 2


def targets(result: dict) -> dict:
    """The issue's targets, each with its numbers and whether it is met."""
    rows, teacher = result["rows"], result["teacher"]
    by = {(r["noise"], r["loss"]): r for r in rows}
    noises = sorted({r["noise"] for r in rows})
    metrics = {"tux R@5 (mean of both ways)": lambda r: _r5(r[EVALS[1]]),
               "tux acc1": lambda r: r[EVALS[1]]["acc1"], "fmnist acc1": lambda r: r[EVALS[0]]["acc1"]}
    ot_vs = {}
    for name, get in metrics.items():
        gaps = [get(by[n, "ot"]) - get(by[n, "infonce"]) for n in noises if (n, "ot") in by and (n, "infonce") in by]
        ot_vs[name] = {"gaps": gaps, "ot_at_least_infonce": all(g >= 0 for g in gaps),
                       "gap_grows": len(gaps) > 1 and all(b > a for a, b in itertools.pairwise(gaps))}
        ot_vs[name]["met"] = ot_vs[name]["ot_at_least_infonce"] and ot_vs[name]["gap_grows"]
    t = teacher[EVALS[1]]
    keys = ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5")
    above = {f"{r['row']} {r['noise']:g}": all(r[EVALS[1]][k] > t[k] for k in keys) for r in rows + result["extras"]}
    above_r5 = {f"{r['row']} {r['noise']:g}": _r5(r[EVALS[1]]) > _r5(t) for r in rows + result["extras"]}
    default = min((r for r in rows if r["loss"] == "ot"), key=lambda r: r["noise"], default=rows[0])
    runs = result["timing"]["runs"]
    own = next((r for r in runs if r["threads"] == result["timing"]["threads"]), runs[0])["ot"]
    return {
        "ot_vs_infonce": {"noises": noises, **ot_vs},
        "above_teacher": {"row": f"{default['loss']} at noise {default['noise']:g}",
                          "met": all(default[EVALS[1]][k] > t[k] for k in keys), "rows_above": sum(above.values()),
                          "rows": len(above), "which": above, "r5": _r5(default[EVALS[1]]), "teacher_r5": _r5(t),
                          "met_r5": _r5(default[EVALS[1]]) > _r5(t), "rows_above_r5": sum(above_r5.values())},
        "sinkhorn_share": {"threads": result["timing"]["threads"], "share": own["sinkhorn_share"],
                           "met": own["sinkhorn_share"] < 0.05, "ot_soft_labels_share": own["ot_soft_labels_share"],
                           "sinkhorn_ms": own["sinkhorn_ms"], "step_ms": own["step_ms"],
                           "by_threads": {r["threads"]: r["ot"]["sinkhorn_share"] for r in runs},
                           "unreliable": [r["threads"] for r in runs if not _steady(r)]},
    }


def _steady(run: dict) -> bool:
    """Whether a timing run's two passes agree (median steps within 1.5x): the load did not swing between them."""
    return 1 / 1.5 < run["ot"]["step_ms_instrumented"] / run["ot"]["step_ms"] < 1.5


def _acc(m: dict) -> str:
    return f"{m['acc1']:.3f} [{m['acc1_lo']:.3f}, {m['acc1_hi']:.3f}]"


def write(result: dict, out: Path) -> None:
    s, teacher, timing = result["settings"], result["teacher"], result["timing"]
    result["targets"] = tg = targets(result)
    chance = [teacher[e]["chance"] for e in EVALS]
    cores = os.cpu_count() or 1
    peak = max([r["load1"] for r in result["rows"] + result["extras"]] + [result["loads"]["start"][0],
                                                                         result["loads"]["end"][0]])
    d = s["defaults"]
    lines = [
        "# Align (OTTER) benchmark" + (" (quick smoke run)" if s["quick"] else ""), "",
        f"Machine: {machine()}. One run; every number below was measured in it.", "",
        (f"Towers `{s['image']}` + `{s['text']}`, {s['mode']} mode, joint dim {s['dim']}; pairs "
         f"{' + '.join(f'`{p}`' for p in s['pairs'])} ({result['rows'][0]['pairs']} pairs). Every row: "
         f"{s['epochs']} epochs, batch {s['batch_size']} (unless the row says otherwise), AdamW lr {s['lr']:g}, "
         f"weight decay {d['weight_decay']:g}, warm-up {d['warmup']:g}, seed {s['seed']}. Loss defaults: alpha "
         f"{d['alpha']:g}, lambda {d['lam']:g}, {d['sinkhorn_iters']} Sinkhorn iterations, kd temperature "
         f"{d['kd_temperature']:g}, EMA {d['ema']:g}, S_vv/S_tt from the {d['similarity']}. Caption noise replaces "
         "that fraction of captions by those of random pairs."),
        "",
        (f"Eval (zero-shot): `{EVALS[0]}` ({result['eval_rows'][EVALS[0]]} images, chance {chance[0]:.3f}) and "
         f"`{EVALS[1]}` ({result['eval_rows'][EVALS[1]]} images, chance {chance[1]:.3f}, "
         f"{result['eval_captions'][EVALS[1]]} distinct captions for retrieval). Accuracy with its Wilson 95% "
         "interval; i→t = image→text retrieval (an image query finds its caption), t→i = text→image. Image "
         "features come from the effnet-lite2 cache through each run's image head; checked on the first row "
         "against the run VLM's `encode_image`, class weights and `encode_text` (largest difference "
         f"{max(v for c in result['rows'][0]['check'].values() for v in c.values()):.1e})."),
        "", "train s = the training loop alone (features and caption embeddings cached); steps = optimizer steps.",
    ]
    if s["threads_set"]:
        lines += ["", (f"Torch threads: {s['threads']} for the whole run (`--threads {s['threads']}`): on this shared, "
                       "oversubscribed machine more threads than free cores made every step slower (the timing "
                       "table below gives both).")]
    if result["loads"]["start"][0] > 0.5 * cores or peak > cores:
        lines += ["", (f"**Shared machine:** load average {result['loads']['start'][0]:.1f} at the start and up to "
                       f"{peak:.1f} during the run ({cores} cores, this benchmark included): another job was "
                       "running, so seconds and milliseconds are inflated and noisier than on an idle machine; "
                       "the accuracies are not affected.")]
    head = ["noise", "loss", "fmnist acc1 [95%]", "tux acc1 [95%]", "tux i→t R@1", "tux i→t R@5", "tux t→i R@1",
            "tux t→i R@5", "steps", "train s"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(r: dict, noise: str, name: str) -> list[str]:
        f, t = r[EVALS[0]], r[EVALS[1]]
        return [noise, name, _acc(f), _acc(t), *(f"{t[k]:.3f}" for k in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5")),
                str(r.get("steps", "-")), f"{r['train_s']:.1f}" if "train_s" in r else "-"]

    for r in result["rows"]:
        lines.append("| " + " | ".join(cells(r, f"{r['noise']:g}", r["loss"])) + " |")
    for r in result["extras"]:
        lines.append("| " + " | ".join(cells(r, f"{r['noise']:g}", f"*{r['row']}*")) + " |")
    lines.append("| " + " | ".join(cells(teacher, "-", f"teacher `{TEACHER}`")) + " |")
    runs = timing["runs"]

    def per_run(fmt) -> str:
        return " | ".join(fmt(r) for r in runs)

    lines += [
        "", f"## Sinkhorn's share of the training step (ot loss, batch {timing['batch']})", "",
        ("One training step = `AlignTask.step` (EMA-teacher embeddings, both targets, logits, loss) + backward + "
         "gradient clipping + AdamW step + EMA update, on cached features (the pairs above, noise 0); median of "
         f"{timing['steps']} steps after {timing['warmup']} warm-up steps, at each torch thread count. The two "
         "`ot_soft_labels` calls (image→text and text→image: normalising, the similarity matmuls, Sinkhorn, row "
         "normalisation) and the two `sinkhorn` calls inside them were timed inside real steps (a second pass of "
         "the same length with timers around them); a share is the median over those steps of the part's time over "
         "its own step's time (the instrumented step times are in the last-but-one line)."), "",
        "| part | " + per_run(lambda r: f"{r['threads']} thread(s): ms | share") + " |",
        "|---|" + "---|---|" * len(runs),
        "| ot training step | " + per_run(lambda r: f"{r['ot']['step_ms']:.2f} | -") + " |",
        "| `ot_soft_label_pair` (both directions, whole targets) | " + per_run(
            lambda r: f"{r['ot']['ot_soft_labels_ms']:.2f} | {100 * r['ot']['ot_soft_labels_share']:.1f}%") + " |",
        "| `sinkhorn` alone (both directions, one batched call) | " + per_run(
            lambda r: f"{r['ot']['sinkhorn_ms']:.2f} | {100 * r['ot']['sinkhorn_share']:.1f}%") + " |",
        "| infonce training step, for reference | " + per_run(lambda r: f"{r['infonce']['step_ms']:.2f} | -") + " |",
        "| ot step, instrumented pass | " + per_run(lambda r: f"{r['ot']['step_ms_instrumented']:.2f} | -") + " |",
        "| load average (1 min) at the start | " + per_run(lambda r: f"{r['load1']:.1f} | ") + " |",
    ]
    slow = max(runs, key=lambda r: r["ot"]["step_ms"])
    fast = min(runs, key=lambda r: r["ot"]["step_ms"])
    if slow is not fast and slow["ot"]["step_ms"] > 2 * fast["ot"]["step_ms"]:
        lines += ["", (f"At {slow['threads']} thread(s) the ot step took {slow['ot']['step_ms'] / fast['ot']['step_ms']:.0f}x "
                       f"as long as at {fast['threads']} (threads competing for cores other jobs keep busy), and its "
                       "times swing from step to step; the faster setting's shares are the fairer ones.")]
    for r in runs:
        ratio = r["ot"]["step_ms_instrumented"] / r["ot"]["step_ms"]
        if not _steady(r):
            lines += ["", (f"At {r['threads']} thread(s) the instrumented pass's median step ({r['ot']['step_ms_instrumented']:.0f} "
                           f"ms) was {ratio:.1f}x the clean pass's ({r['ot']['step_ms']:.0f} ms): the other jobs' load "
                           "swung between the passes, so that column's part times and shares are unreliable.")]
    ov, ab, sk = tg["ot_vs_infonce"], tg["above_teacher"], tg["sinkhorn_share"]
    noises = ", ".join(f"{n:g}" for n in ov["noises"])
    lines += ["", "## Targets", "", f"Measured as they came, nothing tuned to pass them. ot − infonce at noise {noises}:", ""]
    for name in ("tux R@5 (mean of both ways)", "tux acc1", "fmnist acc1"):
        m = ov[name]
        lines.append(f"- {name}: {', '.join(f'{g:+.3f}' for g in m['gaps'])} → ot ≥ infonce everywhere: "
                     f"{'yes' if m['ot_at_least_infonce'] else 'no'}; gap growing with noise: "
                     f"{'yes' if m['gap_grows'] else 'no'}.")
    t = teacher[EVALS[1]]
    d0 = next((r for r in result["rows"] if f"{r['loss']} at noise {r['noise']:g}" == ab["row"]), result["rows"][0])
    lines += [
        "",
        (f"1. **ot ≥ infonce at every noise level, gap growing with noise** (on tux R@5): "
         f"**{'met' if ov['tux R@5 (mean of both ways)']['met'] else 'not met'}** (see the gaps above)."),
        (f"2. **Aligned VLM above the ConSE teacher on Tux caption retrieval**, {ab['row']}"
         f"{' (align’s default loss)' if ab['row'].startswith('ot ') else ''}: "
         f"on R@5 (mean of both ways, the number DESIGN 3.3 compares) **{'met' if ab['met_r5'] else 'not met'}**: "
         f"{ab['r5']:.3f} vs the teacher's {ab['teacher_r5']:.3f} ({ab['rows_above_r5']} of {ab['rows']} aligned "
         f"rows above); on all four of i→t/t→i R@1/R@5 **{'met' if ab['met'] else 'not met'}**: i→t R@1/R@5 "
         f"{d0[EVALS[1]]['i2t_R@1']:.3f}/{d0[EVALS[1]]['i2t_R@5']:.3f} vs {t['i2t_R@1']:.3f}/{t['i2t_R@5']:.3f}, "
         f"t→i {d0[EVALS[1]]['t2i_R@1']:.3f}/{d0[EVALS[1]]['t2i_R@5']:.3f} vs {t['t2i_R@1']:.3f}/"
         f"{t['t2i_R@5']:.3f} ({ab['rows_above']} of {ab['rows']} aligned rows above on all four)."),
        (f"3. **Sinkhorn under 5% of the step time** (batch {timing['batch']}, {sk['threads']} thread(s) as the "
         f"run): **{'met' if sk['met'] else 'not met'}**: {100 * sk['share']:.1f}% ({sk['sinkhorn_ms']:.2f} of "
         f"{sk['step_ms']:.2f} ms); the whole `ot_soft_labels` (similarity matmuls included) is "
         f"{100 * sk['ot_soft_labels_share']:.1f}%" + "".join(
             f"; at {n} thread(s) Sinkhorn is {100 * v:.1f}%{' (unreliable, see above)' if n in sk['unreliable'] else ''}"
             for n, v in sk["by_threads"].items() if n != sk["threads"]) + "."),
        "", (f"One seed per row: on {result['eval_captions'][EVALS[1]]}-{result['eval_rows'][EVALS[1]]} Tux queries an R@5 near {ab['r5']:.2f} has a binomial "
             f"standard error of about {(ab['r5'] * (1 - ab['r5']) / result['eval_rows'][EVALS[1]]) ** 0.5:.3f} per "
             "direction, so retrieval gaps of that size (including most ot − infonce gaps above) are within noise."),
        "", "align.json holds every number (and the per-step timings); align.png plots tux R@5 and accuracy by loss.",
    ]
    write_results(out, "align", "\n".join(lines) + "\n", result)
    plot(result, out / "align.png")


def plot(result: dict, path: Path) -> None:
    """Grouped bars by loss at each noise level: tux R@5 both ways and both accuracies; the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, teacher = result["rows"], result["teacher"]
    noises = sorted({r["noise"] for r in rows})
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    by = {(r["noise"], r["loss"]): r for r in rows}
    panels = [("tux caption R@5, image→text", EVALS[1], "i2t_R@5"), ("tux caption R@5, text→image", EVALS[1], "t2i_R@5"),
              ("tux accuracy", EVALS[1], "acc1"), ("fashion-mnist accuracy", EVALS[0], "acc1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    width = 0.8 / len(losses)
    x = np.arange(len(noises))
    for ax, (title, spec, key) in zip(axes, panels):
        for k, loss in enumerate(losses):
            ax.bar(x + (k - (len(losses) - 1) / 2) * width, [by[n, loss][spec][key] for n in noises], width,
                   label=loss)
        ax.axhline(teacher[spec][key], color="k", ls="--", lw=1, label="ConSE teacher")
        if key == "acc1":
            ax.axhline(teacher[spec]["chance"], color="#c44e52", lw=1, label="chance")
        ax.set_xticks(x, [f"noise {n:g}" for n in noises])
        ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.legend(*axes[2].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--timing-steps", type=int, default=30, help="timed steps for the Sinkhorn share (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the whole run (0: torch's default); "
                                                          "the timing is also taken at one thread per core")
    p.add_argument("--quick", action="store_true", help="smoke run: noise 0.3, infonce and ot, 3 epochs, no extra "
                                                        "rows, 5 timed steps; results in a temporary folder")
    p.add_argument("--out", help="results folder (default bench/results; a temporary one with --quick)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.timing_steps = min(args.epochs, 3), min(args.timing_steps, 5)
    result = run(args)
    out = Path(args.out) if args.out else (Path(result["settings"]["work"]) / "results" if args.quick else HERE / "results")
    write(result, out)


if __name__ == "__main__":
    main()
