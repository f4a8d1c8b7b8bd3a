"""Run folders' model cards start with front matter a model hub accepts (issue 13, item 5)."""
from __future__ import annotations

import json

import pytest
from helpers import colour_folder

from zeroshift.cards import front_matter, licence
from zeroshift.cli.main import main

huggingface_hub = pytest.importorskip("huggingface_hub")


def test_a_run_card_parses_as_a_hub_model_card_with_its_results(home, tmp_path):
    data = colour_folder(tmp_path / "imgs", 4, 20)
    run = tmp_path / "bridge"
    assert main(["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data",
                 f"folder:{data}", "--method", "ttc", "--epochs", "1", "--eval-data", f"folder:{data}",
                 "--out", str(run), "--quiet"]) == 0
    card = huggingface_hub.ModelCard((run / "README.md").read_text())
    meta = card.data
    assert meta.library_name == "zeroshift" and meta.pipeline_tag == "zero-shot-image-classification"
    assert meta.base_model == ["tiny-clip:seed=0", "tiny-clip:seed=1"] and "zoom-shot" in meta.tags
    record = next(json.loads(p.read_text()) for p in (run / "results").glob("*classification*.json"))
    acc1 = [r for r in meta.eval_results if r.metric_name == "top-1 accuracy"]
    assert len(acc1) == 1 and acc1[0].metric_value == pytest.approx(record["metrics"]["acc1"], abs=1e-4)
    assert acc1[0].task_type == "zero-shot-image-classification" and acc1[0].dataset_name == f"folder:{data}"
    assert "# zeroshift bridge" in card.text  # the body follows the front matter unchanged


def test_licences_come_from_the_catalogue_and_run_paths_stay_out():
    assert licence(["conse:effnet-lite2+minilm"]) == {"license": "apache-2.0"}
    assert licence(["conse:effnet-lite2+minilm", "open-nsfw"]) == {"license": "other",
                                                                   "license_name": "apache-2.0 AND bsd-2-clause"}
    assert licence(["tiny-clip:seed=0"]) == {}
    meta = front_matter({"kind": "bridge", "teacher": "run:/home/me/runs/aligned@abc123", "encoder": "open-nsfw"},
                        [], "chain")
    assert meta["base_model"] == ["run:aligned@abc123", "open-nsfw"] and meta["license"] == "bsd-2-clause"
    assert "model-index" not in meta  # nothing measured yet
