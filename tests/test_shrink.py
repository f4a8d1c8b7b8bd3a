"""shrink: candidates made, judged on held-out images, exported within a budget; resume, refusals; tiny models."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_folder, one_line

import zeroshift
from zeroshift.errors import DataError, SpecError, ZeroshiftError
from zeroshift.models.student import param_count
from zeroshift.shrinking import ShrinkConfig, run as R
from zeroshift.shrinking import candidates as C
from zeroshift.shrinking.config import DEFAULT_CANDIDATES, TRUNK_STUDENT
from zeroshift.shrinking.report import choose, ms, within

pytestmark = pytest.mark.usefixtures("module_home")  # caches made by one test are found by the next
TEACHER = "tiny-clip:seed=0,size=192"  # slower than every candidate, as a teacher is: shrink refuses slower ones
CANDIDATES = ("transfer:tiny-clip:seed=1", "distill:student-cnn:width=8,size=32")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return f"folder:{colour_folder(tmp_path_factory.mktemp('shrink') / 'data', 12, 40)}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, module_home, data) -> tuple[ShrinkConfig, dict]:
    """One whole shrink (evaluated, int8 tried), which several tests read and one re-chooses from."""
    cfg = _cfg(tmp_path_factory.mktemp("finished"), data, eval_data=(data,), int8=True)
    return cfg, R.shrink(cfg)


def _cfg(tmp_path: Path, data: str, **kw) -> ShrinkConfig:
    return ShrinkConfig(**{"teacher": TEACHER, "data": (data,), "labels": "red,green,blue", "out": str(tmp_path / "out"),
                           "candidates": CANDIDATES, "runtime": "torch", "device": "cpu", "quiet": True,
                           "distill": "epochs=2,views=1,batch_size=8", "int8": False, **kw})


def _stable(result: dict) -> list[dict]:
    """What a rerun must reproduce exactly: everything but the timings."""
    return [{k: r[k] for k in ("name", "role", "parameters", "macs", "scores", "eval")} for r in result["rows"]]


def test_split_specs_are_disjoint_and_cover_the_source(data):
    from zeroshift.data.split import split_spec
    from zeroshift.specs import dataset

    whole = dataset(data)
    fit, held = (dataset(split_spec(data, part, 0.25, 3)) for part in ("fit", "held"))
    assert set(fit.keys).isdisjoint(held.keys) and set(fit.keys) | set(held.keys) == set(whole.keys)
    assert len(held) == round(0.25 * len(whole))
    assert dataset(split_spec(data, "held", 0.25, 4)).keys != held.keys  # the seed changes the split
    with pytest.raises(SpecError, match="split= takes fit or held"):
        dataset(data + "[split=test,held=0.2,seed=0]")


def test_shrink_end_to_end_scores_exports_and_chooses(finished, data):
    from zeroshift.export.run import predict

    cfg, result = finished
    out = Path(cfg.out)
    rows = result["rows"]
    assert [r["name"] for r in rows] == [TEACHER, *CANDIDATES] and rows[0]["role"] == "teacher"
    assert rows[0]["scores"]["agreement"] == 1.0 and rows[0]["scores"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    held = len(json.loads((out / "teacher" / "rows.json").read_text())[0])
    for r in rows:
        assert r["scores"]["images"] == held and 0 <= r["scores"]["agreement"] <= 1
        assert r["float"]["ms_per_image_b1"] > 0 and ("refused" in r["int8"] or r["int8"]["ms_per_image_b1"] > 0)
        assert r["eval"][data]["n"] == 36 and r["parameters"] > 0
    assert result["chosen"]["name"] == max(rows[1:], key=lambda r: (r["scores"]["agreement"], -ms(r)))["name"]
    for name in ("table.md", "tradeoff.png", "shrink_results.json", "README.md", "labels.txt"):
        assert (out / name).is_file(), name
    assert "(chosen)" in (out / "table.md").read_text()
    got = predict(str(out / "classifier.onnx"), [str(next(Path(data[7:]).glob("red/*.png")))])
    assert {x["label"] for x in got[0]["ranking"]} == {"red", "green", "blue"}
    fit = json.loads((Path(rows[1]["run"]) / "config.json").read_text())["data"]
    assert [e["spec"] for e in fit] == [f"{data}[split=fit,held=0.2,seed=0]"]  # candidates never see held images


def test_a_budget_no_candidate_meets_exports_nothing(finished, capsys, monkeypatch):
    cfg, _ = finished
    monkeypatch.setattr(R, "candidate_stage", None)  # a budget only chooses again: nothing is made
    result = R.shrink(replace(cfg, budget_params=10))
    out = Path(cfg.out)
    assert result["chosen"] is None and result["export"] is None
    assert (out / "table.md").is_file() and (out / "tradeoff.png").is_file()
    assert not (out / "classifier.onnx").exists() and not (out / "README.md").exists()
    assert "no candidate fits the budget" in capsys.readouterr().out
    again = R.shrink(cfg)  # without the budget: chosen again from the finished candidates
    assert again["chosen"] is not None and (out / "classifier.onnx").is_file()


def test_a_kill_resumes_from_the_finished_candidates(tmp_path, finished, monkeypatch):
    cfg, whole = finished
    made = []
    real = R.candidate_stage

    def dies_on_second(cfg, c, *args):
        made.append(c.name)
        if len(made) == 2:
            raise KeyboardInterrupt
        return real(cfg, c, *args)

    monkeypatch.setattr(R, "candidate_stage", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        R.shrink(replace(cfg, out=str(tmp_path / "b")))
    made.clear()
    monkeypatch.setattr(R, "candidate_stage", lambda cfg, c, *a: made.append(c.name) or real(cfg, c, *a))
    resumed = R.shrink(replace(cfg, out=str(tmp_path / "b")))
    assert made == [CANDIDATES[1]]  # the first candidate was not made again
    assert _stable(resumed) == _stable(whole)


def test_choose_takes_the_best_agreement_within_budget():
    def row(name, agreement, ms_, params=100):
        return {"name": name, "role": "candidate", "parameters": params, "scores": {"agreement": agreement},
                "float": {"ms_per_image_b1": ms_}, "int8": None}

    rows = [row("a", 0.9, 10.0), row("b", 0.8, 2.0), row("c", 0.8, 1.0, params=1000)]
    assert choose(rows, None, None)["name"] == "a"
    assert choose(rows, 5.0, None)["name"] == "c"  # equal agreement: the faster
    assert choose(rows, 5.0, 500)["name"] == "b"
    assert choose(rows, 0.5, None) is None
    teacher = {**row("t", 1.0, 1.5), "role": "teacher"}
    assert choose([teacher] + rows, None, None)["name"] == "c"  # only c is faster than the teacher
    assert within(rows[1], None, None, teacher_ms=1.5) == (False, "slower than the teacher (2.00 ms >= 1.50 ms)")
    assert within(teacher, None, None, teacher_ms=1.5)[0]  # the teacher is never refused for being itself


@pytest.mark.parametrize("kw, error, match", [
    ({"labels": ""}, ZeroshiftError, "label"),
    ({"labels": "red,green,red"}, ZeroshiftError, "duplicate"),
    ({"candidates": ("distill:tiny-clip:seed=1",)}, SpecError, "candidate student"),
    ({"candidates": ("compress:student-cnn",)}, ZeroshiftError, "METHOD:SPEC"),
    ({"holdout": 0.0}, ZeroshiftError, "share of images held out"),
    ({"holdout": 0.99}, DataError, "fit image"),
    ({"distill": "epochs=2,teacher=x"}, ZeroshiftError, "NAME=VALUE"),
    ({"transfer": "ridge=lots"}, ZeroshiftError, "takes a float"),
    ({"budget_ms": -1.0}, ZeroshiftError, "above 0"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, data, kw, error, match):
    with pytest.raises(error, match=match) as e:
        R.shrink(_cfg(tmp_path, data, **kw))
    assert "\n" not in one_line(e)
    assert not (tmp_path / "out" / "candidates").exists()


def test_too_few_images_and_no_installed_candidate(tmp_path, monkeypatch):
    small = colour_folder(tmp_path / "small", 1, 40, colours={"red": (255, 0, 0), "blue": (0, 0, 255)})
    with pytest.raises(DataError, match="fit image"):
        R.shrink(_cfg(tmp_path, f"folder:{small}", labels="red,blue"))
    monkeypatch.setattr(C, "installed", lambda spec: False)
    with pytest.raises(ZeroshiftError, match="no candidate is installed"):
        R.shrink(_cfg(tmp_path, f"folder:{small}", candidates=()))


def test_the_default_candidates_are_installed_here_and_valid():
    pytest.importorskip("efficientnet_lite_pytorch")
    chosen = C.candidate_list(ShrinkConfig(teacher="tiny-clip:seed=0", data=("folder:x",), labels="a,b", out="o"))
    assert TRUNK_STUDENT in DEFAULT_CANDIDATES and TRUNK_STUDENT in [c.name for c in chosen]
    trunk = zeroshift.load(TRUNK_STUDENT.partition(":")[2])  # the pretrained student: a tenth of the teacher's tower
    assert param_count(trunk) < 0.1 * param_count(zeroshift.load("effnet-lite2"))


def test_an_out_of_other_settings_is_refused(finished, tmp_path):
    cfg, _ = finished
    with pytest.raises(ZeroshiftError, match="other settings .*seed"):
        R.shrink(replace(cfg, seed=1))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "shrink.json").write_text(json.dumps({"identity": {"seed": 0}}))
    (tmp_path / "old" / "table.md").write_text("old")
    R.check_folder(replace(cfg, overwrite=True), tmp_path / "old", {"seed": 1})  # --overwrite starts over
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["shrink.json"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ZeroshiftError, match="holds no shrink"):
        R.check_folder(cfg, tmp_path / "other", {"seed": 0})


def test_cli_prints_the_summary(tmp_path, data, capsys):
    from zeroshift.cli.main import main

    assert main(["shrink", "--teacher", TEACHER, "--data", data, "--labels", "red,green,blue", "--out",
                 str(tmp_path / "cli"), "--candidates", CANDIDATES[0], "--runtime", "torch", "--device", "cpu",
                 "--no-int8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "shrink finished" in printed and "transfer:tiny-clip:seed=1 *" in printed
    assert np.isfinite(json.loads((tmp_path / "cli" / "shrink_results.json").read_text())["rows"][1]["scores"]["cosine"])
