"""Run reports: intervals, chance levels, tables and plots from evaluation records."""
from __future__ import annotations

import pytest

from zeroshift.report import bar_plot, chance, display, markdown_table, rows, wilson_interval, HEADERS


def _record(task, metrics, **extra):
    return {"dataset": "d", "model": "m", "pretrained": "", "task": task, "metrics": metrics, **extra}


def test_wilson_interval_contains_estimate_and_shrinks_with_n():
    lo1, hi1 = wilson_interval(0.3, 100)
    lo2, hi2 = wilson_interval(0.3, 10000)
    assert lo1 < lo2 < 0.3 < hi2 < hi1
    assert wilson_interval(0.0, 50)[0] == 0.0 and wilson_interval(1.0, 50)[1] == pytest.approx(1.0)


def test_chance_levels():
    cls = _record("zeroshot_classification", {"acc1": 0.5}, classnames=list("abcdefghij"))
    assert chance(cls, "acc1") == pytest.approx(0.1) and chance(cls, "acc5") == pytest.approx(0.5)
    ret = _record("zeroshot_retrieval", {}, zeroshift={"evaluated": 200, "texts": 100})
    assert chance(ret, "image_retrieval_recall@5") == pytest.approx(5 / 200)
    assert chance(ret, "text_retrieval_recall@1") == pytest.approx(1 / 100)


def test_rows_table_and_plot(tmp_path):
    recs = [_record("zeroshot_classification", {"acc1": 0.4, "acc5": 0.9, "mean_per_class_recall": 0.41},
                    classnames=["a", "b", "c", "d", "e", "f"], zeroshift={"evaluated": 300})]
    table = rows(recs)
    assert [r[2] for r in table] == ["acc1", "acc5", "mean_per_class_recall"]
    assert table[0][4] < 0.4 < table[0][5] and table[2][4] is None  # no interval for a mean of recalls
    md = markdown_table(display(table), HEADERS)
    assert md.count("\n") == 4 and "0.400" in md
    path = bar_plot(table, tmp_path / "p.png", "t")
    assert path.stat().st_size > 1000
