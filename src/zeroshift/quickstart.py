"""The main job on the offline catalogue: evaluate the offline teacher zero-shot, bridge other
encoders into its joint space (transfer), distil small students from it (distill), align a new VLM
from an image and a text tower (align) and bridge an encoder into that one, evaluate them all the
same way, and write one report."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace

from . import paths
from .version import __version__
from .errors import ZeroshiftError
from .report import HEADERS, bar_plot, display, markdown_table, rows


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = field(default="runs/quickstart", metadata={"help": "run folder for the report"})
    teacher: str = field(default="conse:effnet-lite2+minilm", metadata={"help": "the VLM to evaluate and transfer from"})
    # Every 4th Fashion-MNIST test image: six models are evaluated, and the whole test set would take the
    # quickstart past 10 minutes on 2 cores; the benchmarks in bench/ use all 10,000.
    data: tuple[str, ...] = field(default=("fashion-mnist:test[::4]", "tuxpaint[1::2]"), metadata={
        "help": "data specs to evaluate on (held out from every fit)", "aliases": ("--datasets",)})
    encoders: tuple[str, ...] = field(default=("effnet-lite0", "open-nsfw"),
                                      metadata={"help": "encoders to bridge into the teacher ('none', or no value: skip transfer)"})
    fit_data: str = field(default="tuxpaint[0::2]", metadata={"help": "unlabelled images the bridges are fit on"})
    students: tuple[str, ...] = field(default=("student-cnn",), metadata={
        "help": "student encoders to distil from the teacher ('none', or no value: skip distill)"})
    distill_data: str = field(default="synthetic:classes=fashion-mnist+tuxpaint,n=2000,size=96", metadata={
        "help": "images the students learn the teacher's embeddings on (synthetic clip-art renders)"})
    distill_epochs: int = field(default=8, metadata={"help": "epochs of each distillation"})
    align_towers: tuple[str, ...] = field(default=("effnet-lite2", "minilm"), metadata={
        "help": "image and text tower of a new VLM made with align (OTTER; 'none', or no value: skip align)"})
    align_data: str = field(default="tuxpaint[0::2]", metadata={
        "help": "image-caption pairs align trains on", "aliases": ("--align-pairs",)})
    chain_encoder: str | None = field(default="effnet-lite0", metadata={
        "help": "encoder bridged into the aligned VLM, to show align -> transfer ('none': skip)"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})


COST_HEADERS = ["step", "model", "parameters per image", "parameters per label set"]


def cost_cells(cost: dict) -> tuple[str, str]:
    """VLM.cost() as the report's two cells: the image path's and the text side's parameters (in millions
    from 10,000 on)."""
    shown = [(cost.get(side) or {}).get("parameters") for side in ("image", "text")]
    return tuple("-" if n is None else f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"  # type: ignore[return-value]
                 for n in shown)


NONE = "none"  # the value that skips a step: `--encoders none` as `--encoders` with no value


def resolved(cfg: QuickstartConfig) -> QuickstartConfig:
    """`cfg` with every 'none' dropped: `encoders=("none",)` skips transfer, as `encoders=()` does."""
    def keep(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v for v in values if v.strip().casefold() != NONE)

    chain = cfg.chain_encoder if cfg.chain_encoder and cfg.chain_encoder.strip().casefold() != NONE else None
    return replace(cfg, encoders=keep(cfg.encoders), students=keep(cfg.students),
                   align_towers=keep(cfg.align_towers), chain_encoder=chain)


def quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict:
    """Evaluate the teacher and one bridge per encoder on each dataset; write records, report.md,
    a plot and config.json (the resolved options, and the runtime each model ran on) into `cfg.out`."""
    from .methods.align import AlignConfig, align
    from .methods.distill import DistillConfig, distill
    from .methods.transfer import TransferConfig, transfer
    from .models.runtime import runtime_used
    from .specs import load, require
    from .zeroshot.evaluate import evaluate

    cfg = resolved(cfg)
    require(cfg.teacher, "vlm", "teacher", "--teacher")  # every spec's kind, before the first of many steps
    for spec in (*cfg.encoders, *([cfg.chain_encoder] if cfg.chain_encoder and cfg.align_towers else [])):
        require(spec, ("image", "vlm"), "encoder", "--encoders" if spec in cfg.encoders else "--chain-encoder")
    for spec in cfg.students:
        require(spec, "image", "student", "--students")
    for spec, side in zip(cfg.align_towers, ("image", "text")):
        require(spec, (side, "vlm"), f"{side} tower", "--align-towers")
    out = paths.user_path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "results").glob("*.json"):  # records of an earlier quickstart here would mix with this one's
        old.unlink()
    started = time.perf_counter()
    models = [("teacher", cfg.teacher, lambda: load(cfg.teacher, runtime=cfg.runtime))]
    for enc in cfg.encoders:
        tcfg = TransferConfig(teacher=cfg.teacher, encoder=enc, data=cfg.fit_data, out=str(out / "bridges" / paths.slug(enc, 200)),
                              overwrite=True, runtime=cfg.runtime)
        models.append((f"transfer {enc}", f"{enc} -> bridge", lambda tcfg=tcfg: transfer(tcfg, progress=progress)))
    for student in cfg.students:
        dcfg = DistillConfig(teacher=cfg.teacher, student=student, data=(cfg.distill_data,),
                             out=str(out / "students" / paths.slug(student, 200)), epochs=cfg.distill_epochs,
                             views=1, overwrite=True, runtime=cfg.runtime)  # the plain images: views cost teacher passes
        models.append((f"distill {student}", f"{student} (distilled)", lambda dcfg=dcfg: distill(dcfg, progress=progress)))
    if cfg.align_towers:
        if len(cfg.align_towers) != 2:
            raise ZeroshiftError("--align-towers takes an image tower and a text tower (or nothing to skip align)")
        aligned = out / "aligned" / paths.slug("+".join(cfg.align_towers), 200)
        acfg = AlignConfig(image=cfg.align_towers[0], text=cfg.align_towers[1], data=(cfg.align_data,),
                           out=str(aligned), epochs=50, batch_size=128, overwrite=True, runtime=cfg.runtime)
        models.append(("align", f"{'+'.join(cfg.align_towers)} (aligned, ot)", lambda: align(acfg, progress=progress)))
        if cfg.chain_encoder:
            ccfg = TransferConfig(teacher=f"run:{aligned}", encoder=cfg.chain_encoder, data=cfg.fit_data,
                                  out=str(out / "bridges" / ("aligned-" + paths.slug(cfg.chain_encoder, 200))),
                                  overwrite=True, runtime=cfg.runtime)
            models.append((f"transfer {cfg.chain_encoder} -> aligned", f"{cfg.chain_encoder} -> bridge -> aligned",
                           lambda: transfer(ccfg, progress=progress)))
    records, timings, costs, runtimes = [], [], [], {}
    for step, name, make in models:
        t0 = time.perf_counter()
        vlm = make()
        runtimes[step] = runtime_used(vlm)
        fit_seconds = round(time.perf_counter() - t0, 1)
        costs.append((step, name, *cost_cells(vlm.cost())))
        for data in cfg.data:
            t1 = time.perf_counter()
            recs = evaluate(vlm, data, out=out / "results", batch_size=cfg.batch_size, runtime=cfg.runtime,
                            progress=progress)
            label = name  # the report's name; files keep the spec
            records += [{**r, "model": label, "pretrained": ""} for r in recs.values()]
            timings.append((step, data, fit_seconds, round(time.perf_counter() - t1, 1)))
            fit_seconds = 0.0
    table = rows(records)
    plot = bar_plot(table, out / "zeroshot.png", f"zero-shot: teacher {cfg.teacher}, bridged encoders, students")
    seconds = round(time.perf_counter() - started, 1)
    report = [
        "# zeroshift quickstart", "",
        f"Teacher `{cfg.teacher}` evaluated zero-shot; {len(cfg.encoders)} encoder(s) bridged into its joint "
        f"space with Zoom-shot (`transfer`) on the unlabelled images of `{cfg.fit_data}`; {len(cfg.students)} "
        f"small student(s) trained to reproduce its image embeddings (`distill`) on `{cfg.distill_data}`; "
        + (f"a new VLM aligned from `{' + '.join(cfg.align_towers)}` with OTTER (`align`) on the pairs of "
           f"`{cfg.align_data}`" + (f", and `{cfg.chain_encoder}` bridged into it" if cfg.chain_encoder else "") + "; "
           if cfg.align_towers else "") + f"all evaluated the same way. zeroshift {__version__}, {seconds} s in all.", "",
        markdown_table(display(table), HEADERS), "",
        markdown_table(timings, ["step", "dataset", "load/fit seconds", "eval seconds"]), "",
        markdown_table(costs, COST_HEADERS), "",
        "Parameters per image are the image path's (encoder or student and its head), paid for every image; "
        "parameters per label set are the text side's (a bridged or distilled model borrows its teacher's "
        "text tower), paid once for a set of labels.", "",
        f"![zero-shot results]({plot.name})", "",
        "Bridges are in `bridges/`, students in `students/`, aligned VLMs in `aligned/` (use one as "
        "`--model run:<folder>`); records in "
        "CLIP_benchmark's format are "
        "in `results/`; the resolved options in `config.json`.", "",
    ]
    (out / "report.md").write_text("\n".join(report))
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "runtime_used": runtimes, "version": __version__},
                                                indent=2) + "\n")
    return {"records": records, "table": table, "costs": costs, "seconds": seconds, "report": out / "report.md"}
