"""`zeroshift predict --json` is strict JSON and fails when nothing was classified (issue 17, item 8)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import zeroshift.predict
from zeroshift import load
from zeroshift.cli.main import main

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
    monkeypatch.setattr(zeroshift.predict, "load", lambda spec, runtime="auto": vlm)


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


def test_predict_results_never_hold_nan(tmp_path, monkeypatch):
    """The library call too: a non-finite row is an error, not a ranking of NaNs."""
    nan_model(monkeypatch, rows=[1])
    results = zeroshift.predict.predict(SPEC, images(tmp_path / "imgs", 3), ["a", "b"])
    assert ["error" in r for r in results] == [False, True, False]
    json.dumps(results, allow_nan=False)
    assert torch.isfinite(torch.tensor([x["prob"] for r in results if "ranking" in r for x in r["ranking"]])).all()
