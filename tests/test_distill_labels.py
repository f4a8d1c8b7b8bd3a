"""distill --labels: the KL of the teacher's zero-shot distributions over the user's labels goes beside the
chosen loss, the held-out images are scored by agreement among those labels (no image label is read), and
that score chooses the kept epoch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import colour_folder

from zeroshift.errors import ZeroshiftError
from zeroshift.methods.distill import DistillConfig, distill, label_weights, make_loss
from zeroshift.specs import load

TEACHER = "tiny-clip:seed=0"
pytestmark = pytest.mark.usefixtures("home")


def _cfg(tmp_path: Path, **kw) -> DistillConfig:
    data = tmp_path / "data"
    if not data.exists():
        colour_folder(data, 4, 40, seed=0)  # 4 per colour, 3 colours
    return DistillConfig(**{"teacher": TEACHER, "student": "student-cnn:width=8,size=32", "data": (f"folder:{data}",),
                            "out": str(tmp_path / "run"), "epochs": 3, "batch_size": 8, "runtime": "torch",
                            "device": "cpu", "precision": "fp32", "views": 2, "holdout": 0.25, **kw})


def test_the_labels_term_is_the_weighted_kl_among_the_labels_beside_l2(tmp_path):
    teacher = load(TEACHER, runtime="torch")
    cfg = _cfg(tmp_path, labels="red,green,blue", label_weight=2.0, tau=50.0)
    weights = label_weights(cfg, teacher)  # [3, d]
    assert weights.shape == (3, teacher.dim)
    loss, record = make_loss(cfg, teacher, [], lambda: 1 / 0, weights)  # l2 never asks for the vocabulary
    assert record["labels"] == {"count": 3, "weight": 2.0, "tau": 50.0, "templates": "default"}
    torch.manual_seed(0)
    s, t = torch.randn(5, teacher.dim), torch.randn(5, teacher.dim)  # [5, d]
    terms = loss(s, {"target": t})
    assert set(terms) == {"l2", "kl-labels"}
    p_t = (50 * F.normalize(t, dim=-1) @ weights.T).softmax(-1)  # [5, 3]
    log_p_s = (50 * F.normalize(s, dim=-1) @ weights.T).log_softmax(-1)  # [5, 3]
    want = 2.0 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert terms["kl-labels"].item() == pytest.approx(want.item(), rel=1e-5)
    assert loss(t, {"target": t})["kl-labels"].item() == pytest.approx(0.0, abs=1e-6)
    plain, plain_record = make_loss(_cfg(tmp_path), teacher, [], lambda: 1 / 0)
    assert set(plain(s, {"target": t})) == {"l2"} and "labels" not in plain_record


def test_labels_score_the_held_out_images_and_choose_the_kept_epoch(tmp_path):
    distill(_cfg(tmp_path, labels="red\ngreen\nblue"), progress=False)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/kl-labels" in r and "loss/l2" in r for r in rows)
    among = [r["eval/holdout_labels_agreement"] for r in rows if "eval/holdout_labels_agreement" in r]
    assert len(among) == 3 and all(0 <= a <= 1 for a in among)
    kept = config["holdout"]["kept"]
    assert kept["kept_by"] == "holdout_labels_agreement" and kept["kept_score"] == pytest.approx(max(among))
    assert config["loss"]["labels"]["count"] == 3 and config["holdout"]["labels"] is True
    card = (run / "README.md").read_text()
    assert "KL of the teacher's zero-shot distributions over the 3 --labels" in card
    assert "over the --labels, then over the imagenet vocabulary" in card


@pytest.mark.parametrize("kw", [{"labels": "red"}, {"labels": "red,red"}, {"labels": " , "},
                                {"labels": "red,blue", "label_weight": -1.0}])
def test_bad_labels_are_one_line_errors(tmp_path, kw):
    with pytest.raises(ZeroshiftError, match="--labels needs at least 2 different labels") as e:
        _cfg(tmp_path, **kw)
    assert "\n" not in str(e.value)


def test_a_missing_label_file_is_one_line_and_nothing_is_written(tmp_path):
    with pytest.raises(ZeroshiftError) as e:
        distill(_cfg(tmp_path, labels=str(tmp_path / "nowhere.txt")), progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
