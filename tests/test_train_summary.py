"""What training commands say when they end (issue 16, item 5): the summary lines and the figures behind
them, the teacher beside the model, the resume line, --quiet, and progress bars counting whole images."""
from __future__ import annotations

import json

import pytest
from helpers import colour_folder

from zeroshift.cache.embed import bar_label, short_spec
from zeroshift.cli.main import main
from zeroshift.methods.transfer import BridgeTask

pytestmark = pytest.mark.usefixtures("home")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
BAR = ("%|", "img/s", "step/s", "it/s")  # what a tqdm bar leaves on stderr


@pytest.fixture()
def folder(tmp_path):
    """Three colour classes, four 32 px images each: 12 rows."""
    return colour_folder(tmp_path / "imgs", 4, 32, noise=25, colours=COLOURS)


def _transfer(folder, out, *extra: str) -> int:
    return main(["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data",
                 f"folder:{folder}", "--out", str(out), "--runtime", "torch", *extra])


def test_transfer_summary_counts_steps_and_rows_and_sets_the_teacher_beside_it(folder, tmp_path, capsys):
    out = tmp_path / "ttc"
    assert _transfer(folder, out, "--method", "ttc", "--batch-size", "4", "--eval-dataset", f"folder:{folder}",
                     "--quiet", "--holdout", "0") == 0
    lines = capsys.readouterr().out.splitlines()
    config = json.loads((out / "config.json").read_text())
    last = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert config["summary"]["steps"] == 15 and config["summary"]["rows"] == 12  # 5 epochs of 3 batches of 4
    assert config["summary"]["final_loss"] == pytest.approx(last["loss"])
    train = next(line for line in lines if line.startswith("transfer:"))
    assert " 5 epochs, 15 steps over 12 rows in " in train and train.endswith(f"final loss {last['loss']:.3g}")
    summary = json.loads((out / "results" / "summary.json").read_text())
    (task,) = summary["tasks"]
    teacher = json.loads(next((out / "results" / "teacher").glob("*.json")).read_text())
    assert task["teacher"] == pytest.approx(teacher["metrics"]["acc1"]) and summary["teacher"].startswith("tiny-clip")
    evals = next(line for line in lines if line.startswith("eval folder:"))
    lo, hi = task["interval"]
    assert f"acc1 {task['value']:.3f} [{lo:.2f}, {hi:.2f}] on 12; teacher {task['teacher']:.3f}" in evals
    if task["teacher"]:
        assert f"keeps {task['value'] / task['teacher']:.2f} of the teacher" in evals
    assert train.index("5 epochs") == evals.index("acc1")  # the lines are aligned

    assert _transfer(folder, tmp_path / "lstsq", "--method", "lstsq", "--holdout", "0") == 0
    out_text = capsys.readouterr().out
    assert "transfer: closed form over 12 rows in " in out_text and "eval" not in out_text


def test_distill_summary_and_align_without_a_teacher(folder, tmp_path, capsys):
    assert main(["distill", "--teacher", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--student",
                 "student-cnn:width=8,size=32", "--epochs", "2", "--batch-size", "4", "--out", str(tmp_path / "st"),
                 "--views", "1", "--holdout", "0",
                 "--runtime", "torch", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "distill: 2 epochs, 6 steps over 12 rows in " in out and "final loss " in out and "eval" not in out
    pairs = folder / "pairs.csv"
    pairs.write_text("path,caption\n" + "".join(f"{c}/{i}.png,a {c} square\n" for c in COLOURS for i in range(4)))
    aligned = tmp_path / "aligned"
    assert main(["align", "--image", "tiny-clip:seed=0", "--text", "tiny-clip:seed=1", "--pairs", f"csv:{pairs}",
                 "--dim", "8", "--epochs", "1", "--batch-size", "6", "--eval-dataset", f"folder:{folder}",
                 "--out", str(aligned), "--runtime", "torch", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "align:" in out and "1 epoch, 2 steps over 12 rows" in out
    assert "; chance 0.333 (no teacher to compare with)" in out and not (aligned / "results" / "teacher").exists()


def test_a_resumed_run_says_from_which_step(folder, tmp_path, capsys, monkeypatch, interrupt_at):
    run = tmp_path / "run"
    args = ("--method", "ttc", "--batch-size", "4", "--quiet")
    step = interrupt_at(BridgeTask, 8)  # killed in epoch 3; the checkpoint of the end of epoch 2 is step 6
    assert _transfer(folder, run, *args) == 130
    monkeypatch.setattr(BridgeTask, "step", step)
    capsys.readouterr()
    assert _transfer(folder, run, *args) == 0
    captured = capsys.readouterr()
    assert f"resumed from step 6 of 15 ({tmp_path / 'run.ckpt'})" in captured.err.splitlines()
    assert "15 steps (resumed from step 6) over 11 rows"  # one of 12 images held out in captured.out


def test_quiet_leaves_no_bar_and_bars_count_whole_images(tmp_path, capsys):
    three = colour_folder(tmp_path / "three", 1, 32, colours=COLOURS)  # 3 images
    base = ["embed", "--model", "tiny-clip:seed=0", "--data", f"folder:{three}"]
    assert main([*base, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert not any(mark in captured.err for mark in BAR) and "cache:" in captured.out
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "3.00" not in err and f"embed tiny-clip:seed=0,dim=32,size=32 on {short_spec(f'folder:{three}')}" in err
    assert main(["eval", "--model", "tiny-clip:seed=1", "--dataset", f"folder:{three}", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    assert not any(mark in capsys.readouterr().err for mark in BAR)


def test_bar_labels_name_the_role_and_shorten_long_specs():
    assert bar_label("teacher", "conse:effnet-lite2+minilm", "tuxpaint[0::2]") == \
        "embed teacher conse:effnet-lite2+minilm on tuxpaint[0::2]"
    assert short_spec("folder:/tmp/pytest-of-someone/pytest-123/test_x0/images") == "folder:.../images"
    assert short_spec("run:/home/someone/runs/a-long-name/bridge@0123456789ab") == "run:.../bridge"
    assert len(short_spec("x" * 100)) == 40
