"""Run reports: a Markdown table and a bar plot of evaluation records, with chance and 95% intervals."""
from __future__ import annotations

import math
from pathlib import Path

SHOWN = ("acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1", "image_retrieval_recall@5",
         "text_retrieval_recall@1", "text_retrieval_recall@5")


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n trials."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def chance(record: dict, metric: str) -> float | None:
    """Expected value of `metric` for a random ranking, where it is defined by the record."""
    info = record.get("zeroshift", {})
    if record["task"] == "zeroshot_classification":
        c = len(record.get("classnames") or [])
        k = 5 if metric == "acc5" else 1
        return min(1.0, k / c) if c else None
    if "@" in metric:
        k = int(metric.split("@")[1])
        pool = info.get("texts") if metric.startswith("text_") else info.get("evaluated")
        return min(1.0, k / pool) if pool else None
    return None


PROPORTIONS = ("acc", "recall@")  # metrics that are a fraction of n independent trials


def rows(records: list[dict]) -> list[tuple]:
    """(model, dataset, metric, value, low, high, chance, n) for the metrics worth showing; low/high is
    the 95% interval where the metric is a proportion, else None, and chance is None where undefined."""
    out = []
    for r in records:
        n = int(r.get("zeroshift", {}).get("evaluated", 0))
        model = r["model"] + (f"@{r['pretrained']}" if r["pretrained"] else "")
        for metric in SHOWN:
            if metric not in r["metrics"]:
                continue
            v = r["metrics"][metric]
            lo, hi = wilson_interval(v, n) if any(p in metric for p in PROPORTIONS) else (None, None)
            out.append((model, r["dataset"], metric, v, lo, hi, chance(r, metric), n))
    return out


HEADERS = ["model", "dataset", "metric", "value", "95% interval", "chance", "n"]


def display(table: list[tuple]) -> list[tuple]:
    """`rows` output with the interval in one column and absent values as '-'."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return [(m, d, k, f"{v:.3f}", "-" if lo is None else f"{lo:.3f}-{hi:.3f}", fmt(ch), n)
            for m, d, k, v, lo, hi, ch, n in table]


def markdown_table(table: list[tuple], headers: list[str]) -> str:
    """A GitHub Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table]
    return "\n".join(lines)


def bar_plot(table: list[tuple], path: Path, title: str) -> Path:
    """Horizontal bars of every (model, dataset, metric) value with its interval and chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{m} | {d} | {k}" for m, d, k, *_ in table]
    values = [row[3] for row in table]
    err = [[0.0 if lo is None else v - lo for _, _, _, v, lo, *_ in table],
           [0.0 if hi is None else hi - v for _, _, _, v, _, hi, *_ in table]]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(table) + 1.2))
    y = list(range(len(table)))[::-1]
    ax.barh(y, values, xerr=err, color="#4c72b0", ecolor="#333", capsize=2)
    for yi, row in zip(y, table):
        if row[6] is not None:
            ax.plot([row[6]] * 2, [yi - 0.4, yi + 0.4], color="#c44e52", lw=2)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("value (red tick: chance; whiskers: 95% interval)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CARD_METRICS = ("acc1", "acc5", "mean_per_class_recall")


def card_tail(out: str, records: list[dict] | None, commands: list[str], files: str) -> list[str]:
    """The end of a run's model card: its results (CLIP_benchmark records) and how to use it."""
    lines = ["", "## Results", ""]
    if records:
        lines += ["| dataset | task | metric | value |", "|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['task']} | {k} | {v:.4f} |" for r in records for k, v in r["metrics"].items()
                  if k in CARD_METRICS or k.startswith("flat_hit") or k.endswith(("recall@1", "recall@5"))]
        lines += ["", "Records in CLIP_benchmark's format are in `results/`."]
    else:
        lines.append(f"Not evaluated yet: `zeroshift eval --model run:{out} --data ...`")
    return lines + [
        "", "## Use", "", "```", f"zeroshift predict --model run:{out} --labels 'cat,dog' image.jpg", *commands, "```", "",
        "```python", "import zeroshift", f"model = zeroshift.load('run:{out}')", "```", "", f"Files: {files}", "",
    ]
