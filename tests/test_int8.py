"""Issue 13, item 2: int8 exports with onnxruntime's quantisation tools, calibrated on real images (a run's
own fit data by default), refused below the agreement threshold with the float graph."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from helpers import colour_folder, one_line, tiny_vlm
from torch import nn

from zeroshift import load, runfolder
from zeroshift.cli.main import main
from zeroshift.errors import ZeroshiftError
from zeroshift.export import export, quantize
from zeroshift.export.onnx import export_classifier
from zeroshift.export.quantize import Int8, Refused
from zeroshift.models.vlm import TowersVLM

pytestmark = pytest.mark.usefixtures("home")
LABELS = ["red", "green", "blue"]


@pytest.fixture()
def fit_run(tmp_path, add_run_kind) -> str:
    """tiny_vlm() as a run whose config records its fit data: a folder of noisy colour images."""
    data = colour_folder(tmp_path / "fit", n=12, side=40)
    add_run_kind("tiny-nobias", lambda folder, config, state, runtime: tiny_vlm())
    with runfolder.RunWriter(tmp_path / "run") as run:
        run.finish({"kind": "tiny-nobias", "teacher": "tiny-clip:seed=0", "data": {"spec": f"folder:{data}", "rows": 36}},
                   {"x": torch.zeros(1)}, "# tiny")
    return f"run:{tmp_path / 'run'}"


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_calibrates_on_the_runs_fit_data_and_records_it(tmp_path, fit_run):
    out = tmp_path / "clf.onnx"
    export(fit_run, LABELS, out, int8=Int8(images=16, check_images=20, min_agreement=0.0))
    info = json.loads((tmp_path / "clf.onnx.json").read_text())
    assert info["precision"] == "int8" and info["teacher"] == "tiny-clip:seed=0"
    quant = info["int8"]
    assert quant["method"].startswith("static QDQ")
    assert quant["calibration"] == {"data": [f"folder:{tmp_path / 'fit'}"], "source": "the run's fit data",
                                    "bad_images": 0, "images": 16}
    assert quant["check"]["images"] == 20 and quant["agreement"] == quant["check"]["top1_agreement"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(out)
    assert info["input"]["dtype"] == "uint8" and info["float_file"] is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".onnx", ".json")) == ["clf.onnx", "clf.onnx.json"]
    from zeroshift.export.run import predict

    results = predict(out, sorted(str(p) for p in (tmp_path / "fit" / "red").iterdir())[:3])  # the runner runs it
    assert all(len(r["ranking"]) == 3 for r in results)


def test_the_calibration_batch_does_not_change_the_int8_graph(tmp_path, fit_run, monkeypatch):
    """MinMax ranges merge across batches: the batch is a memory setting only, never a change of graph."""
    graphs = {}
    for batch in (1, 5, 16):
        monkeypatch.setattr(quantize, "CALIBRATION_BATCH", batch)
        out = tmp_path / f"b{batch}.onnx"
        export(fit_run, LABELS, out, int8=Int8(images=16, check_images=8, min_agreement=0.0))
        graphs[batch] = onnx.load(str(out)).graph
    scales = {b: sorted((t.name, onnx.numpy_helper.to_array(t).tobytes()) for t in g.initializer if "scale" in t.name)
              for b, g in graphs.items()}
    assert scales[1] and scales[1] == scales[5] == scales[16]


def test_int8_below_the_threshold_is_refused_and_keep_float_still_writes_float(tmp_path, fit_run, monkeypatch):
    monkeypatch.setattr(quantize, "agreement", lambda want, got: 0.9)
    out = tmp_path / "clf.onnx"
    with pytest.raises(Refused) as e:
        export(fit_run, LABELS, out, int8=Int8(images=8, check_images=10))
    message = one_line(e)
    assert "agrees with its float graph on 0.900 of 10 check images" in message and "below --min-agreement 0.98" in message
    assert "nothing was written" in message
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".json")]
    with pytest.raises(Refused) as e:
        export(fit_run, LABELS, out, int8=Int8(images=8, check_images=10), keep_float=True)
    assert f"the float graph was written to {tmp_path / 'clf.float.onnx'}" in one_line(e)
    assert not out.exists() and (tmp_path / "clf.float.onnx").is_file()
    info = json.loads((tmp_path / "clf.float.onnx.json").read_text())
    assert info["precision"] == "float32" and info["file"] == "clf.float.onnx" and "QuantizeLinear" not in ops(
        tmp_path / "clf.float.onnx")


def test_cli_int8_with_calibrate_and_keep_float(tmp_path, capsys):
    data = colour_folder(tmp_path / "photos", n=8, side=36)
    out = tmp_path / "clf.onnx"
    args = ["export", "--model", "tiny-clip:seed=0", "--labels", ",".join(LABELS), "--out", str(out), "--int8",
            "--calibrate", f"folder:{data}", "--calibration-images", "8", "--check-images", "8",
            "--min-agreement", "0", "--keep-float"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "int8 agreement" in printed and str(out) in printed
    info = json.loads((tmp_path / "clf.onnx.json").read_text())
    assert info["int8"]["calibration"]["source"] == "--calibrate" and info["float_file"] == "clf.float.onnx"
    assert (tmp_path / "clf.float.onnx").is_file()
    assert main(args[:-5] + ["--min-agreement", "1.5"]) == 2
    assert "--min-agreement must be from 0 to 1" in capsys.readouterr().err


def bad_calibration(tmp_path, calibrate: str | None) -> str:
    with pytest.raises(ZeroshiftError) as e:
        export("tiny-clip:seed=0", LABELS, tmp_path / "x.onnx", int8=Int8(calibrate=calibrate))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.onnx.json").exists()
    return one_line(e)


def test_bad_calibration_data_is_one_line(tmp_path):
    assert "give --calibrate SPEC" in bad_calibration(tmp_path, None)  # not a run: no fit data to default to
    (tmp_path / "empty").mkdir()
    assert "no image files" in bad_calibration(tmp_path, f"folder:{tmp_path / 'empty'}")
    data = colour_folder(tmp_path / "few", n=2, side=20)
    assert "has no images" in bad_calibration(tmp_path, f"folder:{data}[0:0]")
    (tmp_path / "bad" / "x").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "bad" / "x" / f"{i}.png").write_bytes(b"not a png")
    assert "none of the 3 calibration images" in bad_calibration(tmp_path, f"folder:{tmp_path / 'bad'}")
    np.save(tmp_path / "small.npy", np.zeros((4, 28, 28, 3), np.uint8))
    message = bad_calibration(tmp_path, str(tmp_path / "small.npy"))
    assert "holds 28x28 images, but the graph takes 32x32" in message
    np.save(tmp_path / "grey.npy", np.zeros((4, 32, 32), np.uint8))
    assert "not uint8 RGB images" in bad_calibration(tmp_path, str(tmp_path / "grey.npy"))


def test_an_array_of_pixels_at_the_input_size_calibrates(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pixels.npy", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    export("tiny-clip:seed=0", LABELS, tmp_path / "x.onnx",
           int8=Int8(calibrate=str(tmp_path / "pixels.npy"), min_agreement=0.0))
    quant = json.loads((tmp_path / "x.onnx.json").read_text())["int8"]
    assert quant["calibration"]["images"] == 6 and quant["check"]["images"] == 6


def test_matmul_heavy_graphs_are_quantised_dynamically(tmp_path):
    vit = load("student-vit:dim=32,depth=2,heads=2,mlp=2,patch=8,size=32")
    text = load("tiny-clip:seed=1,dim=16").text
    torch.manual_seed(0)
    vlm = TowersVLM(vit, text, spec="test:vit", image_head=nn.Linear(vit.dim, 16), dim=16).eval()
    cnn = tiny_vlm()
    data = colour_folder(tmp_path / "photos", n=4, side=36)
    int8 = Int8(calibrate=f"folder:{data}", images=6, check_images=6, min_agreement=0.0)
    export_classifier(vlm, LABELS, tmp_path / "vit.onnx", int8=int8)
    export_classifier(cnn, LABELS, tmp_path / "cnn.onnx", int8=int8)
    vit_info = json.loads((tmp_path / "vit.onnx.json").read_text())["int8"]
    assert vit_info["method"].startswith("dynamic") and "DynamicQuantizeLinear" in ops(tmp_path / "vit.onnx")
    assert json.loads((tmp_path / "cnn.onnx.json").read_text())["int8"]["method"].startswith("static")
    with pytest.raises(ZeroshiftError, match="int8 method must be"):
        Int8(method="fp16")
