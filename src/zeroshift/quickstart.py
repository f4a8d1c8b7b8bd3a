"""The main job on the offline catalogue: the user's question answered on each offline domain. For each
domain, `shrink` the teacher into the cheapest classifiers it finds (bridges from pretrained encoders,
distilled students), fit on that domain's unlabelled images and judged on held-out ones; then `align` a
new VLM from an image and a text tower and shrink into it too (the chain). One compact table and one
trade-off plot say what was made cheaper, by how much, and what it kept."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace

from . import paths
from .errors import ZeroshiftError
from .report import markdown_table
from .shrinking.config import TRUNK_STUDENT, ShrinkConfig
from .version import __version__


JOIN = " + "  # joins the data specs of one domain's fit images: "tuxpaint[0::2] + openclipart[::16]"


def fit_specs(entry: str) -> tuple[str, ...]:
    """One domain's --fit-data entry -> its data specs, in order."""
    specs = tuple(s.strip() for s in entry.split(JOIN))
    if not all(specs):
        raise ZeroshiftError(f"--fit-data {entry!r}: name one data spec, or several joined by '{JOIN.strip()}'")
    return specs


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = field(default="runs/quickstart", metadata={"help": "run folder for the report"})
    teacher: str = field(default="conse:effnet-lite2+minilm", metadata={"help": "the VLM to shrink"})
    # A tenth of Fashion-MNIST's test set and a thousand train images: every image passes through each
    # candidate's encoder and the teacher on 2 cores, within the 10 minutes the main job has; bench/ uses more.
    data: tuple[str, ...] = field(default=("fashion-mnist:test[::10]", "tuxpaint[1::2]"), metadata={
        "help": "one labelled evaluation set per domain (its classes are the labels)", "aliases": ("--datasets",)})
    fit_data: tuple[str, ...] = field(default=("fashion-mnist:train[:1000]", "tuxpaint[0::2]"), metadata={
        "help": "the unlabelled images of each domain, one per --data, that shrink splits into fit and held-out "
                f"('A{JOIN}B': both sources)"})
    # the student starts from pretrained blocks: a randomly initialised one learns too little from so few images
    candidates: tuple[str, ...] = field(default=("transfer:effnet-lite0", "transfer:open-nsfw", TRUNK_STUDENT),
                                        metadata={"help": "shrink's candidates on every domain ('none': teacher only)"})
    transfer: str = field(default="", metadata={"help": "transfer options of every bridge, NAME=VALUE,..."})
    # batch 32: a few hundred fit images give a few steps an epoch at distill's 128; on the held-out images
    # 32 agreed with the teacher more than 64 and 128 on both domains (docs/shrink.md)
    distill: str = field(default="views=1,epochs=10,batch_size=32", metadata={
        "help": "distill options of every student, NAME=VALUE,... (one view: views cost teacher passes)"})
    align_towers: tuple[str, ...] = field(default=("effnet-lite2", "minilm"), metadata={
        "help": "image and text tower of a new VLM made with align (OTTER; 'none', or no value: skip align)"})
    align_data: str = field(default="tuxpaint[0::2]", metadata={
        "help": "image-caption pairs align trains on", "aliases": ("--align-pairs",)})
    chain_candidates: tuple[str, ...] = field(default=("transfer:effnet-lite0", TRUNK_STUDENT), metadata={
        "help": "candidates shrunk into the aligned VLM on the last domain ('none': skip the chain)"})
    budget_ms: float | None = field(default=None, metadata={"help": "shrink's budget, ms per image at batch 1"})
    threads: int = field(default=1, metadata={"help": "threads the exports are timed on"})
    int8: bool = field(default=False, metadata={"help": "also export and time int8 graphs"})
    runtime: str = field(default="auto", metadata={"help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})


NONE = "none"  # the value that skips a step: `--candidates none` as `--candidates` with no value


def resolved(cfg: QuickstartConfig) -> QuickstartConfig:
    """`cfg` with every 'none' dropped: `candidates=("none",)` shrinks to the teacher alone."""
    def keep(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v for v in values if v.strip().casefold() != NONE)

    return replace(cfg, candidates=keep(cfg.candidates), align_towers=keep(cfg.align_towers),
                   chain_candidates=keep(cfg.chain_candidates))


def _shrink_config(cfg: QuickstartConfig, teacher: str, fit: str, data: str, candidates, out):
    from .specs import dataset

    classes = dataset(data).classes
    if not classes:
        raise ZeroshiftError(f"--data {data!r} has no class labels for the quickstart to classify into")
    return ShrinkConfig(teacher=teacher, data=fit_specs(fit), labels="\n".join(classes), out=str(out), eval_data=(data,),
                        candidates=candidates or (NONE,), transfer=cfg.transfer, distill=cfg.distill, budget_ms=cfg.budget_ms,
                        threads=cfg.threads, int8=cfg.int8, runtime=cfg.runtime, overwrite=True)


def compact(results: list[tuple[str, dict]]) -> list[tuple]:
    """One line per model and domain: what it is, what it costs, what it keeps of its teacher."""
    from .models.cost import human
    from .shrinking.report import interval, ms

    lines = []
    for domain, result in results:
        spec = result["config"]["eval_data"][0]
        teacher = result["rows"][0]
        t_acc = teacher["eval"][spec]["acc1"]
        for r in result["rows"]:
            e = r["eval"][spec]
            chosen = result["chosen"] is not None and r["name"] == result["chosen"]["name"]
            lines.append((domain, ("teacher " if r["role"] == "teacher" else "") + r["name"] + (" *" if chosen else ""),
                          human(r["parameters"]), "-" if ms(r) is None else f"{ms(r):.2f}",
                          "-" if r["role"] == "teacher" else f"{r['scores']['agreement']:.3f}",
                          interval(e["acc1"], e["n"]), "-" if r["role"] == "teacher" or not t_acc else f"{e['acc1'] / t_acc:.2f}"))
    return lines


HEADERS = ["domain", "model", "parameters", "ms/image", "agreement (held out)", "acc1 [95% interval]",
           "accuracy kept"]


def plot(results: list[tuple[str, dict]], path) -> None:
    """One trade-off panel per shrink: agreement with the teacher against ms per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .shrinking.report import plot as panel

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.0), squeeze=False)
    for ax, (domain, result) in zip(axes[0], results):
        rows = [{**r, "label": "" if r["role"] == "teacher" else r["name"].split(":", 1)[-1]} for r in result["rows"]]
        panel(rows, path, domain, result["config"]["budget_ms"], ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict:
    """Shrink the teacher on every domain, align a VLM and shrink into it on the last domain; write
    report.md, quickstart.png and config.json into `cfg.out` (each shrink's own folder under shrink/)."""
    from .methods.align import AlignConfig, align
    from .shrinking.candidates import check
    from .shrinking.run import shrink
    from .specs import require

    cfg = resolved(cfg)
    if len(cfg.data) != len(cfg.fit_data) or not cfg.data:
        raise ZeroshiftError(f"--data and --fit-data name one evaluation set and one set of fit images per domain; got "
                             f"{len(cfg.data)} and {len(cfg.fit_data)}")
    require(cfg.teacher, "vlm", "teacher", "--teacher")  # every spec's kind, before the first of many steps
    if cfg.align_towers and len(cfg.align_towers) != 2:
        raise ZeroshiftError("--align-towers takes an image tower and a text tower (or nothing to skip align)")
    for spec, side in zip(cfg.align_towers, ("image", "text")):
        require(spec, (side, "vlm"), f"{side} tower", "--align-towers")
    check(cfg.candidates)
    check(cfg.chain_candidates, "--chain-candidates")
    out = paths.user_path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    plans = [(paths.slug(data.split("[")[0].split(":")[0], 40),
              _shrink_config(cfg, cfg.teacher, fit, data, cfg.candidates, out / "shrink" / paths.slug(data, 60)))
             for fit, data in zip(cfg.fit_data, cfg.data)]
    started = time.perf_counter()
    results = []
    for domain, scfg in plans:
        print(f"quickstart: shrink {cfg.teacher} on {domain}", flush=True)
        results.append((domain, shrink(scfg, progress=progress)))
    if cfg.align_towers:
        aligned = out / "aligned" / paths.slug("+".join(cfg.align_towers), 200)
        print(f"quickstart: align {' + '.join(cfg.align_towers)} on {cfg.align_data}", flush=True)
        align(AlignConfig(image=cfg.align_towers[0], text=cfg.align_towers[1], data=(cfg.align_data,), out=str(aligned),
                          epochs=50, batch_size=128, overwrite=True, runtime=cfg.runtime, quiet=not progress),
              progress=progress)
        if cfg.chain_candidates:
            domain, last = plans[-1]
            chain = replace(last, teacher=f"run:{aligned}", candidates=cfg.chain_candidates,
                            out=str(out / "shrink" / (paths.slug(cfg.data[-1], 60) + "-aligned")))
            print(f"quickstart: shrink the aligned VLM on {domain}", flush=True)
            results.append((f"{domain} (aligned teacher)", shrink(chain, progress=progress)))
    seconds = round(time.perf_counter() - started, 1)
    table = compact(results)
    plot(results, out / "quickstart.png")
    report = [
        "# zeroshift quickstart", "",
        f"The teacher `{cfg.teacher}` shrunk on each domain: every candidate was fit on the domain's unlabelled "
        f"images ({', '.join(f'`{f}`' for f in cfg.fit_data)}), judged on held-out ones by how often it gives the "
        f"teacher's answer (agreement), timed as an ONNX export at batch 1 on {cfg.threads} thread(s), and "
        f"evaluated on {', '.join(f'`{d}`' for d in cfg.data)}"
        + (f"; a new VLM aligned from `{' + '.join(cfg.align_towers)}` on `{cfg.align_data}` is the teacher of the "
           "last shrink" if cfg.align_towers and cfg.chain_candidates else "")
        + f". `*` marks the model each shrink chose and exported. zeroshift {__version__}, {seconds} s in all.", "",
        markdown_table(table, HEADERS), "",
        "Accuracy kept is the model's acc1 as a share of its teacher's on the same images.", "",
        "![agreement against cost](quickstart.png)", "",
        "Each shrink's folder under `shrink/` holds its full table (`table.md`), plot, JSON, candidate runs "
        "(use one as `--model run:<folder>`) and the chosen export with its card.", "",
    ]
    (out / "report.md").write_text("\n".join(report))
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "version": __version__}, indent=2) + "\n")
    return {"results": results, "table": table, "seconds": seconds, "report": out / "report.md"}
