"""Deployment costs of exported classifiers (export/timing.py) and the per-machine cost cache (costcache.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_folder, one_line, tiny_vlm

from zeroshift import costcache
from zeroshift.errors import ZeroshiftError
from zeroshift.export import quantize
from zeroshift.export.onnx import export_classifier
from zeroshift.export.quantize import Int8
from zeroshift.export.timing import deploy_costs, time_graph

pytestmark = pytest.mark.usefixtures("home")
LABELS = ["red", "green", "blue"]
SPEED_KEYS = {"ms_per_image_b1", "images_per_second_b32", "threads"}
FAST = {"batch1_calls": 3, "batch32_calls": 1}


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _speeds_ok(entry: dict, threads: int) -> None:
    assert positive(entry["ms_per_image_b1"]) and positive(entry["images_per_second_b32"])
    assert entry["threads"] == threads


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    out = tmp_path_factory.mktemp("graph") / "clf.onnx"
    return export_classifier(tiny_vlm(), LABELS, out)


def test_time_graph_reports_positive_speeds_from_the_sidecar_or_given_pixels(graph):
    timed = time_graph(graph, threads=1, batch1_calls=3, batch32_calls=1)
    assert set(timed) == SPEED_KEYS
    _speeds_ok(timed, 1)
    given = np.zeros((5, 32, 32, 3), np.uint8)  # fewer than 32 rows: repeated up to the batch
    _speeds_ok(time_graph(graph, threads=2, batch1_calls=2, batch32_calls=1, pixels=given), 2)
    with pytest.raises(ZeroshiftError) as e:
        time_graph(graph, threads=1, pixels=np.zeros((2, 20, 20, 3), np.uint8))
    assert "could not run" in one_line(e)
    with pytest.raises(ZeroshiftError):
        time_graph(graph, threads=0)


def test_deploy_costs_writes_and_times_float_and_int8(tmp_path):
    data = colour_folder(tmp_path / "photos", n=6, side=36)
    costs = deploy_costs(tiny_vlm(), LABELS, tmp_path / "work", threads=1, int8=Int8(images=8, check_images=8,
                         min_agreement=0.0), calibrate=f"folder:{data}", **FAST)
    assert set(costs) == {"float", "int8"}
    for entry in costs.values():
        file = Path(entry["file"])
        assert entry["bytes"] == file.stat().st_size > 0 and file.parent == tmp_path / "work"
        _speeds_ok(entry, 1)
    assert Path(costs["float"]["file"]).name == "classifier.float.onnx"
    assert Path(costs["int8"]["file"]).name == "classifier.onnx"
    sidecar = json.loads((tmp_path / "work" / "classifier.onnx.json").read_text())
    assert sidecar["precision"] == "int8"
    assert costs["int8"]["agreement_with_float"] == sidecar["int8"]["agreement"]
    assert 0.0 <= costs["int8"]["agreement_with_float"] <= 1.0 and costs["int8"]["check_images"] == 8
    assert set(deploy_costs(tiny_vlm(), LABELS, tmp_path / "f", int8=None, **FAST)) == {"float"}


def test_int8_refused_below_the_threshold_still_times_float(tmp_path, monkeypatch):
    data = colour_folder(tmp_path / "photos", n=4, side=36)
    monkeypatch.setattr(quantize, "agreement", lambda want, got: 0.5)  # the check's measurement, forced low
    costs = deploy_costs(tiny_vlm(), LABELS, tmp_path / "work", int8=Int8(images=4, check_images=4),
                         calibrate=f"folder:{data}", **FAST)
    reason = costs["int8"]["refused"]
    assert set(costs["int8"]) == {"refused"} and "\n" not in reason
    assert "agrees with its float graph on 0.500" in reason and "float graph was written" not in reason
    _speeds_ok(costs["float"], 1)
    assert not (tmp_path / "work" / "classifier.onnx").exists()


def test_int8_without_calibration_images_is_refused_and_float_timed(tmp_path):
    costs = deploy_costs(tiny_vlm(), LABELS, tmp_path / "work", **FAST)  # not a run: no fit data to calibrate on
    assert "needs calibration images" in costs["int8"]["refused"]
    assert (tmp_path / "work" / "classifier.float.onnx").is_file()
    _speeds_ok(costs["float"], 1)
    with pytest.raises(ZeroshiftError):  # a float export that fails is raised, not reported
        deploy_costs(tiny_vlm(), ["red", "Red"], tmp_path / "bad", **FAST)


def test_cache_returns_the_stored_result_and_recomputes_for_another_key(tmp_path):
    calls = []

    def compute(value):
        def fn():
            calls.append(value)
            return {"value": value, "shape": (1, 2)}
        return fn

    first = costcache.cached({"spec": "a", "threads": 1}, compute(1))
    again = costcache.cached({"threads": 1, "spec": "a"}, compute(2))  # same key, other order: not recomputed
    assert first == again == {"value": 1, "shape": [1, 2]} and calls == [1]
    other = costcache.cached({"spec": "a", "threads": 2}, compute(3))
    assert other["value"] == 3 and calls == [1, 3]
    path = costcache.cost_path({"spec": "a", "threads": 1})
    assert path.parent == costcache.home() / "costs" and path.is_file()
    stored = json.loads(path.read_text())
    assert stored["key"]["machine"] == costcache.machine() and stored["result"]["value"] == 1
    folder = tmp_path / "elsewhere"
    assert costcache.cached({"spec": "a", "threads": 1}, compute(4), folder=folder)["value"] == 4
    assert len(list(folder.glob("*.json"))) == 1


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    key = {"spec": "b"}
    costcache.cached(key, lambda: {"value": 1})
    path = costcache.cost_path(key)
    path.write_text(path.read_text()[:10])  # truncated JSON
    assert costcache.cached(key, lambda: {"value": 2}) == {"value": 2}
    assert costcache.cached(key, lambda: {"value": 3}) == {"value": 2}  # rewritten whole


def test_stable_spec_excludes_runs_random_models_and_local_files():
    assert costcache.stable_spec("conse:effnet-lite2+minilm") and costcache.stable_spec("openclip:ViT-B-32/laion2b")
    for spec in ("run:/tmp/x", "tiny-clip:seed=0", "student-cnn:random", "onnx:/models/a.onnx", "hf-clip:./local"):
        assert not costcache.stable_spec(spec), spec


def test_image_cost_cache_is_used_for_stable_specs_only(monkeypatch):
    import torch

    from zeroshift.models import cost

    vlm = tiny_vlm()
    measured = []
    real = cost.count

    def counting(parts, images):
        measured.append(1)
        return real(parts, images)

    monkeypatch.setattr(cost, "count", counting)
    kw = {"measure_speed": False, "cache": True}
    cost.image_cost(vlm, **kw)
    cost.image_cost(vlm, **kw)
    assert len(measured) == 2  # its spec holds seed=: never cached
    vlm.spec = "tiny-clip:catalogue-like"
    first = cost.image_cost(vlm, **kw)
    assert cost.image_cost(vlm, **kw) == first and len(measured) == 3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        cost.image_cost(vlm, **kw)  # another thread count: measured again
    finally:
        torch.set_num_threads(threads)
    assert len(measured) == 4


def test_every_session_is_made_one_way_and_a_bad_graph_is_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from zeroshift.ort import session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    sess = session(tmp_path / "relu.onnx", threads=1, spin=False)
    options = sess.get_session_options()
    assert not options.enable_mem_pattern and options.intra_op_num_threads == 1  # no activations kept per shape
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    out = sess.run(["y"], {"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})[0]
    assert out.tolist() == [[0.0, 0.0, 2.0]]
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(ZeroshiftError, match="onnxruntime cannot load") as e:
        session(tmp_path / "bad.onnx")
    assert "\n" not in one_line(e) and "bad.onnx" in str(e.value)
