"""What `eval` tells and writes (issue 16): rows scored and skipped, chance and interval, a warning for data
that covers few classes, record names with the templates and no absolute path, run cards updated,
config.json with what ran, an --out that is a file refused before any work, `quickstart --candidates none`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import colour_folder, tiny_vlm

from zeroshift.cards import body
from zeroshift.cli.main import main
from zeroshift.data.memory import ArraySource
from zeroshift.errors import ZeroshiftError
from zeroshift.models.tiny import create
from zeroshift.report import card_tail
from zeroshift.runfolder import RunWriter

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture()
def folder(tmp_path):
    """Three colour classes of four images each, and one file that is not an image."""
    root = colour_folder(tmp_path / "imgs", 4, 20, noise=25, colours=COLOURS)
    (root / "red" / "broken.png").write_bytes(b"not an image")
    return root


def eval_args(folder, out, *extra) -> list[str]:
    return ["eval", "--model", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--out", str(out),
            "--runtime", "torch", *extra]


def test_eval_prints_rows_scored_and_skipped_chance_and_interval(home, folder, tmp_path, capsys):
    assert main(eval_args(folder, tmp_path / "results")) == 0
    out = capsys.readouterr().out
    assert "95% interval" in out and "chance" in out
    acc1 = next(line for line in out.splitlines() if " acc1 " in f" {line} ")
    assert "0.333 " in acc1 and "-" in acc1.split()[-3]  # chance 1/3, and an interval low-high
    assert "zeroshot_classification: 12 of 13 rows scored; skipped 1 unreadable (red/broken.png)" in out


def test_eval_warns_when_the_rows_cover_fewer_classes_than_the_label_set(home, folder, tmp_path):
    with pytest.warns(UserWarning, match=r"hold only 1 of its 3 classes \(blue\)"):  # sorted: blue comes first
        assert main(eval_args(f"{folder}[0:4]", tmp_path / "results")) == 0
    record = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert record["zeroshift"]["classes_scored"] == 1


def test_record_names_hold_the_templates_and_no_absolute_path(home, folder, tmp_path, capsys):
    results = tmp_path / "results"
    own = tmp_path / "mine.txt"
    own.write_text("a picture of a {c}.\n")
    for templates in ("cifar10", str(own), "default"):
        assert main(eval_args(folder, results, "--templates", templates)) == 0
    names = sorted(p.name for p in results.iterdir())
    assert len(names) == 3, names  # other templates never overwrite a record
    assert [n for n in names if n.endswith("_cifar10.json")] and [n for n in names if n.endswith("_default.json")]
    assert all(tmp_path.name not in n and "pytest" not in n for n in names), names
    assert all(n.startswith("folder_imgs-") for n in names), names
    assert {json.loads((results / n).read_text())["templates"][0] for n in names} >= {"a picture of a {c}."}


def test_eval_of_a_run_updates_its_model_card(home, folder, tmp_path, add_run_kind, capsys):
    import torch

    run = tmp_path / "run"
    add_run_kind("toy-eval", lambda f, config, state, runtime: create("seed=0"))
    with RunWriter(run) as writer:
        writer.finish({"kind": "toy-eval"}, {"w": torch.zeros(2)},
                      "\n".join(["# toy run", *card_tail(str(run), None, [], "config.json")]))
    assert "Not evaluated yet" in (run / "README.md").read_text()
    assert main(["eval", "--model", f"run:{run}", "--data", f"folder:{folder}", "--out", str(tmp_path / "r"),
                 "--runtime", "torch"]) == 0
    card = (run / "README.md").read_text()
    assert "Not evaluated yet" not in card and "| zeroshot_classification | acc1 |" in card
    assert body(card).startswith("# toy run") and "## Use" in card and card.count("## Results") == 1
    assert len(list((run / "results").glob("*.json"))) == 1  # the run keeps its records beside its card


def test_embed_config_records_the_runtime_that_ran_and_the_shard_rows(module_home, folder, tmp_path, capsys):
    out = tmp_path / "feats"
    assert main(["embed", "--model", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--out", str(out),
                 "--runtime", "auto"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["runtime"] in ("onnx", "torch") and config["runtime_requested"] == "auto"
    assert config["shard_rows"] == 4096


def test_a_run_config_records_the_runtime_each_model_ran_on(home, tmp_path, add_run_kind):
    import torch

    from zeroshift.methods.common import Run, RunConfig
    from zeroshift.specs import load

    add_run_kind("toy-run", lambda f, config, state, runtime: create("seed=0"))
    with Run(RunConfig(out=str(tmp_path / "run"), runtime="torch"), "toy-run", {}) as run:
        model = load("tiny-clip:seed=0", runtime="torch")
        run.finish({}, {"w": torch.zeros(2)}, lambda config, records: "# toy\n", progress=False, command="toy", rows=0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["runtime_used"] == {model.spec: "torch"}


def test_an_out_that_is_a_file_fails_in_one_line_before_any_work(home, folder, tmp_path, monkeypatch, capsys):
    import zeroshift.specs
    import zeroshift.zeroshot.evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(zeroshift.specs, "load", no_work)
    monkeypatch.setattr(zeroshift.zeroshot.evaluate, "load", no_work)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for args in (eval_args(folder, taken), ["embed", "--model", "tiny-clip:seed=0", "--data", f"folder:{folder}",
                                            "--out", str(taken)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "existing file" in err and str(taken) in err
    assert taken.read_text() == "mine"


def test_evaluate_writes_files_only_when_given_an_out_folder(home, tmp_path, monkeypatch):
    import zeroshift

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), "test:few", labels=np.arange(12) % 3,
                         classes=list(COLOURS))
    records = zeroshift.evaluate(tiny_vlm(), source, runtime="torch", progress=False)
    assert set(records) == {"zeroshot_classification"} and list(tmp_path.iterdir()) == [tmp_path / "home"]
    taken = tmp_path / "a-file"
    taken.write_text("")
    with pytest.raises(ZeroshiftError, match="^out .* existing file"):  # the parameter's name, not a flag
        zeroshift.evaluate(tiny_vlm(), source, out=taken / "results", runtime="torch", progress=False)


def test_quickstart_candidates_none_shrinks_to_the_teacher_alone(home, folder, tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--teacher", "tiny-clip:seed=0", "--datasets", f"folder:{folder}", "--fit-data",
                 f"folder:{folder}", "--candidates", "none", "--align-towers", "none", "--out", str(out),
                 "--runtime", "torch"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["candidates"] == [] and config["align_towers"] == []
    (shrunk,) = (out / "shrink").iterdir()
    assert not (shrunk / "candidates").exists() and not (shrunk / "classifier.onnx").exists()
    from zeroshift.quickstart import QuickstartConfig, resolved

    cfg = resolved(QuickstartConfig(candidates=("none",), align_towers=("none",), chain_candidates=("None",)))
    assert (cfg.candidates, cfg.align_towers, cfg.chain_candidates) == ((), (), ())
