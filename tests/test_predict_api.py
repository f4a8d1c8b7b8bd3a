"""`zeroshift.predict` and `zeroshift predict` (issue 16): folders, skips on stderr, one probability format,
the label-file rules; `export` refusing to overwrite; `serve` refusing a taken port before loading models."""
from __future__ import annotations

import json
import re
import socket

import pytest
from helpers import colour_folder

import zeroshift
from zeroshift.cli.main import main
from zeroshift.errors import ZeroshiftError
from zeroshift.zeroshot.labels import parse_labels

SPEC = "tiny-clip:seed=0"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture()
def folder(tmp_path):
    """Three colour classes of two images each."""
    return colour_folder(tmp_path / "imgs", 2, 20, noise=25, colours=COLOURS)


def no_loading(monkeypatch) -> None:
    """Building any spec (every model load goes through specs.build) fails the test: the command must
    refuse before it."""
    import zeroshift.specs

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(zeroshift.specs, "build", refuse)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_the_python_api_ranks_the_images_of_a_folder(home, folder):
    results = zeroshift.predict(SPEC, folder, ["red", "green", "blue"], runtime="torch")
    assert [r["image"] for r in results] == [str(folder / c / f"{i}.png") for c in ("blue", "green", "red")
                                            for i in range(2)]
    for r in results:
        assert sorted(x["label"] for x in r["ranking"]) == ["blue", "green", "red"]
        probs = [x["prob"] for x in r["ranking"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    again = zeroshift.predict(SPEC, [folder / "red" / "0.png"], "red,green,blue", runtime="torch")  # text labels too
    assert again[0]["ranking"] == results[4]["ranking"]


def test_python_api_errors_name_parameters(home, folder):
    with pytest.raises(ZeroshiftError, match="^images is empty"):
        zeroshift.predict(SPEC, [], ["red", "green"])
    with pytest.raises(ZeroshiftError, match="at least 2 labels"):
        zeroshift.predict(SPEC, folder, ["red"])


def test_cli_predicts_a_folder_with_skips_on_stderr_and_one_probability_format(home, folder, capsys):
    (folder / "green" / "broken.png").write_bytes(b"not an image")
    assert main(["predict", "--model", SPEC, "--labels", "red,green,blue,cat,dog", "--runtime", "torch",
                 "--top", "5", str(folder)]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()  # one line per skipped image, on stderr
    assert line.startswith(f"skipped {folder / 'green' / 'broken.png'}: ")
    assert "skipped" not in captured.out and captured.out.count("rank  label") == 6
    cells = [line.split()[-1] for line in captured.out.splitlines() if re.match(r"^[1-5] ", line)]
    assert len(cells) == 30 and all(re.fullmatch(r"[01]\.\d{4}", c) for c in cells), cells


def test_label_files_skip_blank_and_comment_lines_and_a_missing_one_is_an_error(tmp_path, monkeypatch, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("# colours\nred\n\n  green  \n#blue\nlight, blue\n")
    assert parse_labels(str(labels), files=True) == ["red", "green", "light, blue"]
    (tmp_path / "labels.json").write_text(json.dumps(["cat", " ", "dog"]))
    assert parse_labels(str(tmp_path / "labels.json"), files=True) == ["cat", "dog"]
    assert parse_labels("a/b,c", files=True) == ["a/b", "c"]  # a comma: a list, never a file
    monkeypatch.chdir(tmp_path)
    no_loading(monkeypatch)
    for typo in ("labls.txt", "sub/labels", "LABELS.CSV"):
        assert main(["predict", "--model", SPEC, "--labels", typo, str(labels)]) == 2
        err = one_error_line(capsys)
        assert "does not exist" in err and "read as a file" in err
    (tmp_path / "one.txt").write_text("# only one\ncat\n")
    for one in ("cat", "one.txt"):
        assert main(["predict", "--model", SPEC, "--labels", one, str(labels)]) == 2
        assert "at least 2 labels" in one_error_line(capsys)


def test_help_documents_the_file_rule(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "ends in .txt, .csv or .json" in " ".join(capsys.readouterr().out.split())


def test_export_refuses_an_existing_file_without_overwrite(home, tmp_path, monkeypatch, capsys):
    out = tmp_path / "classifier.onnx"
    out.write_bytes(b"an older export")
    with monkeypatch.context() as patch:
        no_loading(patch)
        assert main(["export", "--model", SPEC, "--labels", "red,green", "--out", str(out)]) == 2
        assert "--overwrite" in one_error_line(capsys) and out.read_bytes() == b"an older export"
    assert main(["export", "--model", SPEC, "--labels", "red,green", "--out", str(out), "--overwrite", "--no-check"]) == 0
    assert out.read_bytes() != b"an older export"
    assert json.loads(out.with_name("classifier.onnx.json").read_text())["labels"] == ["red", "green"]


def test_serve_refuses_a_taken_port_before_loading_models(home, monkeypatch, capsys):
    pytest.importorskip("uvicorn")
    import zeroshift.serve.app
    import zeroshift.serve.engine

    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the port was checked")

    monkeypatch.setattr(zeroshift.serve.engine, "load_vlm", refuse)
    monkeypatch.setattr(zeroshift.serve.app, "create_app", refuse)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", SPEC, "--port", str(port)]) == 2
    err = one_error_line(capsys)
    assert f"port {port}" in err and "in use" in err and "--port" in err
