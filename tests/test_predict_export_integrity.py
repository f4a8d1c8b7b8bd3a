"""`zeroshift predict --json` is strict JSON and fails when nothing was classified; `zeroshift export`
never leaves a sidecar beside a graph it does not describe, and cleans the temporary files a killed
export left (issue 17, item 8)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import zeroshift.export.onnx as onnx_export
import zeroshift.ranking
from zeroshift import load
from zeroshift.cli.main import main
from zeroshift.io import clean_temp, temp_path

pytestmark = pytest.mark.usefixtures("home")
SPEC = "tiny-clip:seed=0"


def strict_json(text: str):
    """json.loads refusing NaN, Infinity and -Infinity, as every non-Python JSON parser does."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def images(folder, n: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((20, 20, 3), 60 * i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def nan_model(monkeypatch, rows: list[int]):
    """`predict` loads tiny-clip whose encode_image gives NaN features for the batch rows in `rows`."""
    vlm = load(SPEC)
    inner = vlm.encode_image

    def encode_image(batch):
        feats = inner(batch).clone()  # [B, d]
        feats[[r for r in rows if r < len(feats)]] = float("nan")
        return feats

    vlm.encode_image = encode_image
    monkeypatch.setattr(zeroshift.ranking, "load", lambda spec, runtime="auto": vlm)


def test_non_finite_scores_are_a_per_image_error_in_strict_json(tmp_path, monkeypatch, capsys):
    nan_model(monkeypatch, rows=[0])
    paths = images(tmp_path / "imgs")
    assert main(["predict", "--model", SPEC, "--labels", "red,green", "--json", *paths]) == 0
    out = strict_json(capsys.readouterr().out)
    first, second = out["results"]
    assert first["image"] == paths[0] and "non-finite scores" in first["error"] and "ranking" not in first
    assert "error" not in second and [x["label"] for x in second["ranking"]] != []
    assert all(np.isfinite(x["prob"]) for x in second["ranking"])


@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "table"])
def test_every_image_failing_exits_1_with_one_line(tmp_path, monkeypatch, capsys, json_flag):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert main(["predict", "--model", SPEC, "--labels", "red,green", *json_flag, str(bad), str(empty)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: none of the 2 image(s) could be classified; the first, ") and "\n" not in err
    assert str(bad) in err and f"{bad}: {bad}" not in err
    if json_flag:  # still the per-image errors on stdout, as strict JSON
        assert [("error" in r) for r in strict_json(captured.out)["results"]] == [True, True]

    nan_model(monkeypatch, rows=[0, 1])  # readable images, but no finite score for any
    paths = images(tmp_path / "imgs")
    assert main(["predict", "--model", SPEC, "--labels", "red,green", *json_flag, *paths]) == 1
    captured = capsys.readouterr()
    assert "non-finite scores" in captured.err and captured.err.count("\n") == 1
    if json_flag:
        assert all("non-finite" in r["error"] for r in strict_json(captured.out)["results"])


# ---------------------------------------------------------------- export


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_consistent(out) -> None:
    """No temporary file is left, and a sidecar present describes the graph present."""
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    sidecar = out.with_name(out.name + ".json")
    if sidecar.exists():
        assert out.is_file() and json.loads(sidecar.read_text())["sha256"] == sha(out)


def test_a_kill_between_graph_and_sidecar_leaves_no_mismatched_pair(tmp_path, monkeypatch):
    out = tmp_path / "classifier.onnx"
    vlm = load(SPEC)
    onnx_export.export_classifier(vlm, ["red", "green"], out, check=False)
    old_graph, old_sidecar = sha(out), out.with_name("classifier.onnx.json").read_text()

    def disagree(*args, **kwargs):
        raise onnx_export.ZeroshiftError("the ONNX export disagrees with PyTorch; nothing was written")

    with monkeypatch.context() as patch:  # a refused export keeps the old pair whole
        patch.setattr(onnx_export, "_check", disagree)
        with pytest.raises(onnx_export.ZeroshiftError):
            onnx_export.export_classifier(vlm, ["red", "green", "blue"], out)
    assert (sha(out), out.with_name("classifier.onnx.json").read_text()) == (old_graph, old_sidecar)
    assert_consistent(out)

    real_write_json = onnx_export.write_json

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the graph took its name, before the sidecar

    monkeypatch.setattr(onnx_export, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_classifier(vlm, ["red", "green", "blue"], out, check=False)
    assert sha(out) != old_graph  # the new graph is in place ...
    assert not out.with_name("classifier.onnx.json").exists()  # ... and the old sidecar, which lied about it, gone
    assert_consistent(out)

    monkeypatch.setattr(onnx_export, "write_json", real_write_json)
    onnx_export.export_classifier(vlm, ["red", "green", "blue"], out, check=False)  # the rerun completes the pair
    assert json.loads(out.with_name("classifier.onnx.json").read_text())["labels"] == ["red", "green", "blue"]
    assert_consistent(out)


def test_export_removes_the_stale_temp_files_a_killed_export_left(tmp_path):
    out = tmp_path / "classifier.onnx"
    stale = [temp_path(out), temp_path(out.with_name("classifier.onnx.json"))]  # a SIGKILLed export's
    live = temp_path(out)  # another export of the same file, writing now
    others = [tmp_path / ".someone-else.tmp", temp_path(tmp_path / "other.onnx")]  # not this export's
    for path in [*stale, live, *others]:
        path.write_bytes(b"partial")
    for path in [*stale, *others]:
        os.utime(path, (1, 1))  # unmodified for decades
    onnx_export.export_classifier(load(SPEC), ["red", "green"], out, check=False)
    assert not any(p.exists() for p in stale)
    assert live.exists() and all(p.exists() for p in others)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == [
        "classifier.onnx", "classifier.onnx.json"]


def test_clean_temp_by_name_spares_other_files(tmp_path):
    mine, json_one = temp_path(tmp_path / "a.onnx"), temp_path(tmp_path / "a.onnx.json")
    lookalike = tmp_path / ".a.onnx.backup.tmp"  # not a name temp_path makes
    for path in (mine, json_one, lookalike):
        path.write_bytes(b"x")
    assert clean_temp(tmp_path, name="a.onnx") == [mine]
    assert clean_temp(tmp_path, name="a.onnx.json") == [json_one]
    assert lookalike.exists()


def test_predict_results_never_hold_nan(tmp_path, monkeypatch):
    """The library call too: a non-finite row is an error, not a ranking of NaNs."""
    nan_model(monkeypatch, rows=[1])
    results = zeroshift.ranking.predict(SPEC, images(tmp_path / "imgs", 3), ["a", "b"])
    assert ["error" in r for r in results] == [False, True, False]
    json.dumps(results, allow_nan=False)
    assert torch.isfinite(torch.tensor([x["prob"] for r in results if "ranking" in r for x in r["ranking"]])).all()
