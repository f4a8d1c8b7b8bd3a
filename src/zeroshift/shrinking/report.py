"""What shrink writes for a reader: the table of every candidate beside the teacher (Markdown and JSON), the
trade-off plot (agreement with the teacher against ms per image) and the chosen model's card."""
from __future__ import annotations

from pathlib import Path

from ..models.cost import human
from ..report import markdown_table, wilson_interval


def shipped(row: dict) -> str:
    """The export a model ships as: int8 where it was made and kept the float graph's answers, else float."""
    int8 = row.get("int8") or {}
    return "int8" if "ms_per_image_b1" in int8 else "float"


def ms(row: dict) -> float | None:
    """ms per image at batch 1 of the export the model ships as."""
    return (row.get(shipped(row)) or {}).get("ms_per_image_b1")


def within(row: dict, budget_ms: float | None, budget_params: float | None,
           teacher_ms: float | None = None) -> tuple[bool, str]:
    """(fits the budget, why not). A candidate no faster than the teacher never fits: shrinking into it would
    cost speed and answers both."""
    if teacher_ms is not None and row["role"] == "candidate" and (ms(row) is None or ms(row) >= teacher_ms):
        return False, f"slower than the teacher ({_f(ms(row), 2)} ms >= {teacher_ms:.2f} ms)"
    if budget_ms is not None and (ms(row) is None or ms(row) > budget_ms):
        return False, f"{_f(ms(row), 2)} ms > {budget_ms:g} ms"
    if budget_params is not None and row["parameters"] > budget_params:
        return False, f"{human(row['parameters'])} parameters > {human(budget_params)}"
    return True, ""


def choose(rows: list[dict], budget_ms: float | None, budget_params: float | None) -> dict | None:
    """The candidate with the best held-out agreement over the labels within the budget and faster than the
    teacher (the row whose role is teacher, where there is one; ties: the faster)."""
    teacher_ms = next((ms(r) for r in rows if r["role"] == "teacher"), None)
    fits = [r for r in rows if r["role"] == "candidate" and within(r, budget_ms, budget_params, teacher_ms)[0]]
    return max(fits, key=lambda r: (r["scores"]["agreement"], -(ms(r) or float("inf"))), default=None)


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def interval(acc: float, n: int) -> str:
    lo, hi = wilson_interval(acc, n)
    return f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"


def _int8(row: dict) -> str:
    int8 = row.get("int8")
    if int8 is None:
        return "-"
    return "refused" if "refused" in int8 else _f(int8["ms_per_image_b1"], 2)


HEADERS = ["model", "parameters", "multiply-adds", "ms/image float", "ms/image int8", "images/s (shipped, b32)",
           "agreement (labels)", "agreement (vocabulary)", "cosine", "accuracy (held out)"]


def table(rows: list[dict], eval_specs: list[str], chosen: dict | None) -> str:
    """The Markdown table: one line per model, the teacher first; acc1 on each --eval-data with its 95% interval."""
    lines = []
    for r in rows:
        name = ("**" + r["name"] + "** (chosen)") if chosen is not None and r["name"] == chosen["name"] else r["name"]
        s = r["scores"]
        speed = (r.get(shipped(r)) or {}).get("images_per_second_b32")
        fl = r.get("float") or {}
        bare = " (float input: preprocessing not timed)" if fl.get("input") == "float" else ""
        cells = [name, human(r["parameters"]), human(r.get("macs")), _f(fl.get("ms_per_image_b1"), 2) + bare,
                 _int8(r), "-" if speed is None else f"{speed:,.0f} ({shipped(r)})", _f(s["agreement"]),
                 _f(s["agreement_vocab"]), _f(s["cosine"]), _f(s["accuracy"])]
        for spec in eval_specs:
            e = (r.get("eval") or {}).get(spec)
            cells.append("-" if e is None else interval(e["acc1"], e["n"]))
        lines.append(cells)
    return markdown_table(lines, HEADERS + [f"acc1 {spec}" for spec in eval_specs])


def plot(rows: list[dict], path: Path, title: str, budget_ms: float | None = None, ax=None) -> Path | None:
    """Agreement with the teacher over the labels against ms per image (shipped export, batch 1, log scale):
    candidates as points, the teacher as a star at agreement 1, the budget as a vertical line. With `ax`,
    draws into it (a panel of a larger figure) and returns None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        x = ms(r)
        if x is None:
            continue
        teacher = r["role"] == "teacher"
        y = 1.0 if teacher else r["scores"]["agreement"]
        ax.scatter([x], [y], marker="*" if teacher else "o", s=160 if teacher else 50,
                   color="#c44e52" if teacher else "#4c72b0", zorder=3)
        ax.annotate(("teacher " if teacher else "") + r["label"], (x, y), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="#dd8452", ls="--", lw=1.2, label=f"budget {budget_ms:g} ms")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("ms per image (batch 1, shipped export)")
    ax.set_ylabel("top-1 agreement with the teacher (held out)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if not own:
        return None
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def card(result: dict) -> str:
    """README.md of the chosen export: what it is, what it keeps of the teacher and what it costs."""
    c, t, cfg = result["chosen"], result["teacher"], result["config"]
    s = c["scores"]
    lines = [
        "---", "library_name: zeroshift", "pipeline_tag: zero-shot-image-classification",
        f"base_model: {c['spec']}", "tags: [zeroshift, shrink, onnx]", "---", "",
        f"# {c['name']}: a cheap zero-shot classifier that keeps `{cfg['teacher']}`'s answers", "",
        f"Made by `zeroshift shrink` (zeroshift {result['version']}) from {len(result['rows']) - 1} candidates; chosen as "
        f"the best held-out agreement with the teacher"
        + (f" within {result['budget']}" if result["budget"] else "") + ".", "",
        "| | this model | teacher |", "|---|---|---|",
        f"| parameters read per image | {human(c['parameters'])} | {human(t['parameters'])} |",
        f"| multiply-adds per image | {human(c.get('macs'))} | {human(t.get('macs'))} |",
        f"| ms per image, batch 1, {cfg['threads']} thread(s) | {_f(ms(c), 2)} ({shipped(c)}) | {_f(ms(t), 2)} ({shipped(t)}) |",
        f"| top-1 agreement with the teacher, your labels | {s['agreement']:.3f} | 1 |",
        f"| top-1 agreement, 1000 ImageNet names | {s['agreement_vocab']:.3f} | 1 |",
        f"| mean cosine to the teacher's embedding | {s['cosine']:.3f} | 1 |",
    ]
    if s.get("accuracy") is not None:
        lines.append(f"| accuracy on the held-out images ({s['labelled']} labelled) | {s['accuracy']:.3f} | "
                     f"{_f(t['scores']['accuracy'])} |")
    for spec, e in (c.get("eval") or {}).items():
        te = (t.get("eval") or {}).get(spec)
        lines.append(f"| acc1 on `{spec}` (95% interval) | {interval(e['acc1'], e['n'])} | "
                     f"{'-' if te is None else interval(te['acc1'], te['n'])} |")
    lines += ["", f"Scores are on {s['images']} held-out images ({cfg['holdout']:g} of `{'`, `'.join(cfg['data'])}`, by "
              f"image, seed {cfg['seed']}) that no candidate trained on; agreement needs no labels.", "",
              "## Use", "", "```", f"python -m zeroshift.export.run {result['export']} image.jpg", "```", "",
              f"Labels: {', '.join(result['labels'])} (also in `labels.txt`). The graph takes uint8 RGB pixels; its "
              "sidecar (`.json`) gives the resize and crop. The run it was exported from: "
              f"`{c['run']}` (`zeroshift predict --model run:{c['run']} ...`).", ""]
    return "\n".join(lines)


__all__ = ["HEADERS", "card", "choose", "interval", "ms", "plot", "shipped", "table", "within"]
