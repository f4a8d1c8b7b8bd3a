"""The command line: every command end to end on tiny models and data, and one-line errors."""
from __future__ import annotations

import json

import pytest
from helpers import colour_folder

from zeroshift.cli.main import main
from zeroshift.errors import ZeroshiftError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture()
def folder(tmp_path):
    """A folder: dataset, three colour classes, four noisy images each."""
    return colour_folder(tmp_path / "imgs", 4, 20, noise=25, colours=COLOURS)


def test_predict_json_ranks_every_label(home, folder, capsys):
    images = [str(folder / "red" / "0.png"), str(folder / "blue" / "1.png")]
    assert main(["predict", "--model", "tiny-clip:seed=0", "--labels", "red,green,blue", "--json", *images]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out["results"]] == images
    for r in out["results"]:
        probs = [x["prob"] for x in r["ranking"]]
        assert sorted(x["label"] for x in r["ranking"]) == ["blue", "green", "red"]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


def test_predict_table_and_bad_image(home, folder, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["predict", "--model", "tiny-clip:seed=0", "--labels", "red\ngreen", str(folder / "red" / "0.png"), str(bad)])
    captured = capsys.readouterr()
    assert code == 0 and "rank" in captured.out and "skipped" not in captured.out  # stdout: rankings only
    assert captured.err.startswith(f"skipped {bad}: ")


@pytest.mark.parametrize("labels", ["red,red", " , ", "cat,Cat"])
def test_predict_refuses_bad_label_lists(home, folder, labels, capsys):
    assert main(["predict", "--model", "tiny-clip:seed=0", "--labels", labels, str(folder / "red" / "0.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


@pytest.mark.parametrize("spec", ["nosuch:thing", "tiny-clip:seed=x"])
def test_unknown_spec_is_one_line(home, folder, spec, capsys):
    assert main(["eval", "--model", spec, "--data", f"folder:{folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_embed_then_eval_reuses_cache(home, folder, tmp_path, capsys):
    out = tmp_path / "feats"
    assert main(["embed", "--model", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--out", str(out), "--runtime", "torch"]) == 0
    assert (out / "manifest.json").exists() and json.loads((out / "config.json").read_text())["model"] == "tiny-clip:seed=0"
    assert "12" in capsys.readouterr().out
    results = tmp_path / "results"
    assert main(["eval", "--model", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--out", str(results), "--runtime", "torch"]) == 0
    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert len(records) == 1 and records[0]["task"] == "zeroshot_classification"
    assert set(records[0]["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall"}


def test_models_and_datasets_list(home, capsys):
    assert main(["models", "--json"]) == 0
    schemes = {m["scheme"] for m in json.loads(capsys.readouterr().out)}
    assert {"openclip", "conse", "tiny-clip", "effnet-lite0"} <= schemes
    assert main(["datasets", "--json"]) == 0
    assert {"folder", "fashion-mnist", "tuxpaint"} <= {d["scheme"] for d in json.loads(capsys.readouterr().out)}


def test_quickstart_teacher_only_writes_report_plot_config(home, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["quickstart", "--teacher", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--fit-data",
                 f"folder:{folder}", "--candidates", "--align-towers", "--out", str(out), "--runtime", "torch"]) == 0
    report = (out / "report.md").read_text()
    assert "teacher tiny-clip:seed=0" in report and (out / "quickstart.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["teacher"] == "tiny-clip:seed=0"
    assert "quickstart finished" in capsys.readouterr().out


def test_quickstart_fit_data_joins_several_sources_of_one_domain(home, folder, tmp_path):
    from zeroshift.quickstart import QuickstartConfig, _shrink_config, fit_specs

    assert fit_specs("tuxpaint[0::2] + openclipart[::16]") == ("tuxpaint[0::2]", "openclipart[::16]")
    assert fit_specs("folder:a+b") == ("folder:a+b",)  # a '+' inside a spec is part of it
    scfg = _shrink_config(QuickstartConfig(), "tiny-clip:seed=0", f"folder:{folder} + folder:{folder}[::2]",
                          f"folder:{folder}", (), tmp_path)
    assert scfg.data == (f"folder:{folder}", f"folder:{folder}[::2]")
    with pytest.raises(ZeroshiftError, match="--fit-data"):
        fit_specs("tuxpaint[0::2] + ")


def test_quickstart_shrinks_on_each_domain_and_into_an_aligned_vlm(home, folder, tmp_path, capsys):
    out = tmp_path / "run"
    pairs = folder / "pairs.csv"
    pairs.write_text("path,caption\n" + "".join(f"{c}/{i}.png,a {c} square\n" for c in COLOURS for i in range(4)))
    teacher = "tiny-clip:seed=0,size=192"  # slower than every candidate, as a teacher is: shrink refuses slower ones
    assert main(["quickstart", "--teacher", teacher, "--data", f"folder:{folder}", "--fit-data",
                 f"folder:{folder}", "--candidates", "transfer:tiny-clip:seed=1", "distill:student-cnn:width=8,size=32",
                 "--distill", "views=1,epochs=1,batch_size=8", "--align-towers", teacher, "tiny-clip:seed=1",
                 "--align-pairs", f"csv:{pairs}", "--chain-candidates", "transfer:tiny-clip:seed=2,dim=24",
                 "--out", str(out), "--runtime", "torch"]) == 0
    lines = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| folder")]
    models = [line.split(" | ")[1].rstrip(" *") for line in lines]
    assert models == [f"teacher {teacher}", "transfer:tiny-clip:seed=1", "distill:student-cnn:width=8,size=32",
                      f"teacher run:{out / 'aligned' / 'tiny-clip_seed_0_size_192_tiny-clip_seed_1'}",
                      "transfer:tiny-clip:seed=2,dim=24"]
    assert sum(line.split(" | ")[1].endswith("*") for line in lines) == 2  # each shrink chose one
    shrinks = sorted(p.name for p in (out / "shrink").iterdir())
    assert len(shrinks) == 2 and shrinks[1] == shrinks[0] + "-aligned"
    for name in shrinks:
        assert (out / "shrink" / name / "classifier.onnx").is_file() and (out / "shrink" / name / "table.md").is_file()


def test_transfer_command_writes_a_run_that_predict_uses(home, folder, tmp_path, capsys):
    run = tmp_path / "bridge"
    args = ["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data", f"folder:{folder}",
            "--eval-data", f"folder:{folder}", "--out", str(run), "--runtime", "torch"]
    assert main(args) == 0
    assert {"config.json", "model.safetensors", "README.md", "metrics.jsonl", "loss.png"} <= {p.name for p in run.iterdir()}
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # refuses to replace a run
    assert main(["predict", "--model", f"run:{run}", "--labels", "red,green,blue", "--json", str(folder / "red" / "0.png")]) == 0


def test_transfer_command_takes_several_data_specs(home, folder, tmp_path):
    other = colour_folder(tmp_path / "other", 2, 20, noise=25, colours=COLOURS)
    run = tmp_path / "bridge"
    assert main(["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data",
                 f"folder:{folder}", f"folder:{other}", "--method", "lstsq", "--holdout", "0", "--out", str(run),
                 "--runtime", "torch"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert [d["spec"] for d in config["data"]] == [f"folder:{folder}", f"folder:{other}"]
    assert [d["rows_used"] for d in config["data"]] == [12, 6]


def test_distill_and_align_commands_write_runs(home, folder, tmp_path, capsys):
    student = tmp_path / "student"
    assert main(["distill", "--teacher", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--student",
                 "student-cnn:width=8,size=32", "--epochs", "1", "--batch-size", "4", "--eval-data", f"folder:{folder}",
                 "--out", str(student), "--runtime", "torch", "--device", "cpu"]) == 0
    assert f"run: {student}" in capsys.readouterr().out and (student / "results").is_dir()
    pairs = folder / "pairs.csv"
    pairs.write_text("path,caption\n" + "".join(f"{c}/{i}.png,a {c} square\n" for c in COLOURS for i in range(4)))
    aligned = tmp_path / "aligned"
    assert main(["align", "--image", "tiny-clip:seed=0", "--text", "tiny-clip:seed=1", "--data", f"csv:{pairs}",
                 "--dim", "8", "--epochs", "2", "--batch-size", "4", "--out", str(aligned), "--runtime", "torch",
                 "--device", "cpu"]) == 0
    assert main(["predict", "--model", f"run:{aligned}", "--labels", "red,green,blue", "--json",
                 str(folder / "red" / "0.png")]) == 0
    assert main(["align", "--image", "tiny-clip:seed=0", "--text", "tiny-clip:seed=1", "--data", f"csv:{pairs}",
                 "--out", str(aligned)]) == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["transfer", "distill", "align"])
def test_training_commands_show_the_shared_run_options_after_their_own(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    own, _, shared = text.partition("\noptions:\n")[2].partition("\nrun options:\n")  # past the usage line
    assert shared, "no 'run options' group"
    for flag in ("--out", "--epochs", "--batch-size", "--lr", "--weight-decay", "--precision", "--device",
                 "--seed", "--checkpoint-every", "--resume", "--keep-checkpoints", "--overwrite"):
        assert flag in shared and f"  {flag} " not in own, flag
    assert "--teacher" in own or "--image" in own
