"""transfer on views and its label-free held-out selection (issue 14, items 1 and 4): view rows follow their
image into the fit or the held-out split, the ridge and the epoch are chosen by agreement on held-out
images, the best epoch's weights are the ones kept, and bad --views / --holdout / --augment fail in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import one_line
from test_transfer import WORDS, _cfg, _folder, _images, _linear_pair

from zeroshift.cache import embed
from zeroshift.cli.main import main
from zeroshift.data.augment import views_of
from zeroshift.data.memory import ArraySource
from zeroshift.errors import CacheMismatch, DataError, SpecError, ZeroshiftError
from zeroshift.methods.selection import verdict
from zeroshift.train.keep import Keeper
from zeroshift.methods.transfer import FitRows, encode_prompts, fit, transfer
from zeroshift.models.bridge import Bridge

pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture(scope="module")
def case(module_home):
    source, teacher = _linear_pair()
    data = ArraySource(_images(240), "test:images")
    src, tch = embed(source, data, progress=False), embed(teacher, data, progress=False)
    prompts = encode_prompts(teacher, [f"a photo of a {w}." for w in WORDS], len(WORDS), progress=False)
    return src, tch, prompts


def test_view_rows_of_an_image_stay_together_and_held_images_score_on_their_plain_view(module_home):
    source, teacher = _linear_pair()
    views = views_of(ArraySource(_images(20), "test:few"), 3, "crop=0.5-1,jitter=0.2")
    src, tch = embed(source, views, progress=False), embed(teacher, views, progress=False)
    rows = FitRows(src, tch, paired=True, views=3, holdout=0.25, seed=0)
    fit_rows, held_rows = src.index[rows.ps], src.index[rows.held[0]]
    assert len(fit_rows) == 15 * 3 and len(held_rows) == 5 and rows.images == 15
    assert (held_rows % 3 == 0).all()  # the plain view 0 of each held image
    assert not set(fit_rows // 3) & set(held_rows // 3)  # no image on both sides
    assert np.bincount(fit_rows // 3)[np.unique(fit_rows // 3)].tolist() == [3] * 15  # every view of a fit image
    assert (tch.index[rows.held[1]] == held_rows).all()  # the teacher's rows of the same views
    assert FitRows(src, tch, paired=True, views=3).held is None and len(FitRows(src, tch, True, 3).ps) == 60
    with pytest.raises(CacheMismatch, match="holds 3 view"):
        fit(_cfg(method="lstsq", views=2, augment="flip=0"), src, tch, progress=False)


def test_ridge_is_chosen_on_the_held_out_images_or_fixed(case):
    src, tch, prompts = case
    weights = prompts.class_weights()
    result = fit(_cfg(method="lstsq", ridge_grid=(1e-3, 1e3)), src, tch, progress=False, vocabulary=weights)
    grid = result.selection["ridge"]["grid"]
    assert [g["ridge"] for g in grid] == [0.3, 300000.0] and result.ridge == 0.3  # the huge penalty loses
    assert grid[0]["cosine"] > grid[1]["cosine"] and result.selection["images"] == {"fit": 216, "held": 24}
    fixed = fit(_cfg(method="lstsq", ridge_grid=(1.0,)), src, tch, progress=False, vocabulary=weights)
    assert fixed.ridge == 300.0 and fixed.selection["ridge"] is None and fixed.rows == (216, 216)
    assert "for the closed form" in verdict(fixed.selection, "linear")
    off = fit(_cfg(method="lstsq", holdout=0.0), src, tch, progress=False)
    assert off.selection is None and off.rows == (240, 240) and off.ridge == 300.0


def test_mlp_bridge_keeps_its_best_epoch_and_says_when_linear_wins(case):
    src, tch, prompts = case
    held = FitRows(src, tch, True, holdout=0.1).held_out(prompts.class_weights())
    # lr 0.3 throws the mlp off its closed-form warm start: no trained epoch beats it
    result = fit(_cfg(bridge="mlp", hidden=16, lr=0.3, batch_size=108), src, tch, prompts, progress=False)
    sel = result.selection
    assert len(sel["epochs"]) == 10 and sel["kept"]["epoch"] == 0  # 10 epochs by default when selecting
    last = sel["epochs"][-1]
    assert (last["agreement"], last["cosine"]) < (sel["closed_form"]["agreement"], sel["closed_form"]["cosine"])
    assert held.score(result.bridge) == pytest.approx({k: sel["closed_form"][k] for k in ("agreement", "cosine")})
    assert "did not beat its affine warm start" in verdict(sel, "mlp")
    good = fit(_cfg(bridge="mlp", hidden=16, lr=3e-2, batch_size=54, epochs=3), src, tch, prompts, progress=False)
    best = max([good.selection["closed_form"], *good.selection["epochs"]], key=lambda e: (e["agreement"], e["cosine"]))
    assert held.score(good.bridge) == pytest.approx({k: best[k] for k in ("agreement", "cosine")})


def test_best_epoch_keeps_the_first_of_equal_scores_and_restores_it():
    bridge = Bridge(4, 3)
    keeper = Keeper(bridge, metric=("agreement", "cosine"), start={"agreement": 0.5, "cosine": 0.1})  # epoch -1
    for epoch, (agreement, cosine) in enumerate([(0.7, 0.2), (0.7, 0.2), (0.6, 0.9)]):
        with torch.no_grad():
            bridge.h.bias.fill_(epoch + 1)
        keeper.epoch_end(epoch, {"agreement": agreement, "cosine": cosine})
    state = keeper.state_dict()
    assert keeper.finish()["kept_epoch"] == 0 and bridge.h.bias.eq(1).all()  # ties keep the earlier epoch
    again = Keeper(bridge, metric=("agreement", "cosine"))
    again.load_state_dict(state)  # the kept state travels in checkpoints
    with torch.no_grad():
        bridge.h.bias.fill_(9)
    assert again.finish()["kept_epoch"] == 0 and bridge.h.bias.eq(1).all()


def test_transfer_on_views_shares_the_caches_of_every_split(tmp_path, home):
    data = _folder(tmp_path / "data", {"red": 10, "green": 10})
    out = tmp_path / "run"

    def run(**kw):
        return transfer(_cfg(data=f"folder:{data}", out=str(out), method="lstsq", runtime="torch", overwrite=True,
                             views=3, augment="crop=0.5-1,flip=0.5,jitter=0.2", **kw), progress=False)

    run(holdout=0.25)
    config = json.loads((out / "config.json").read_text())
    assert config["data"][0]["rows"] == 20 and config["data"][0]["rows_used"] == 15 * 3 and config["views"]["count"] == 3
    assert config["views"]["recipe"].startswith("crop=0.5-1,flip=0.5,jitter=0.2")
    assert "15 of 20 images x 3 views (45 rows" in (out / "README.md").read_text()
    caches = sorted((home / "features").iterdir())
    assert len(caches) == 2 and all(json.loads((c / "manifest.json").read_text())["rows"] == 60 for c in caches)
    run(holdout=0.5)
    assert sorted((home / "features").iterdir()) == caches  # another split: the same view caches
    assert json.loads((out / "config.json").read_text())["data"][0]["rows_used"] == 10 * 3


def test_bad_views_holdout_and_augment_fail_in_one_line_before_any_work(tmp_path):
    three = _folder(tmp_path / "three", {"cat": 3})
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        transfer(_cfg(data=f"folder:{three}", out=str(out), holdout=0.5), progress=False)
    assert "--holdout 0.5 of the fit data's 3 usable images leaves 1 fit image(s); at least 2" in one_line(e)
    two = _folder(tmp_path / "two", {"cat": 2})
    with pytest.raises(DataError) as e:  # a small share still holds one image out: none is left to fit two
        transfer(_cfg(data=f"folder:{two}", out=str(out), holdout=0.1), progress=False)
    assert "2 usable images leaves 1 fit image(s)" in one_line(e) and not out.exists()
    for kw, words in [({"views": 0}, "--views must be at least 1; got 0"), ({"holdout": 1.0}, "--holdout"),
                      ({"holdout": -0.1}, "--holdout"), ({"augment": "flip=0"}, "give --views K"),
                      ({"ridge_grid": ()}, "--ridge-grid"), ({"ridge_grid": (-1.0,)}, "--ridge-grid")]:
        with pytest.raises(ZeroshiftError) as e:
            _cfg(**kw)
        assert words in one_line(e)
    with pytest.raises(SpecError) as e:
        _cfg(views=2, augment="blur=2")
    assert "unknown augmentation 'blur'" in one_line(e)


def test_transfer_command_takes_views_holdout_and_a_fixed_ridge(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"red": 6, "green": 6})
    run = tmp_path / "run"
    base = ["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data", f"folder:{data}",
            "--out", str(run), "--runtime", "torch", "--method", "lstsq", "--quiet"]
    assert main([*base, "--views", "2", "--augment", "flip=1", "--holdout", "0.25", "--ridge-grid", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["ridge_grid"] == [1.0] and config["holdout"]["images"] == {"fit": 9, "held": 3}
    assert main([*base, "--views", "0", "--overwrite"]) == 2 and "--views must be at least 1" in capsys.readouterr().err


def test_mlp_verdict_tells_a_gain_from_the_split_noise():
    def selection(n: int, start: float, kept: float) -> dict:
        return {"images": {"held": n}, "ridge": None, "closed_form": {"agreement": start, "cosine": 0.5},
                "epochs": [{"epoch": 1, "agreement": kept, "cosine": 0.4}],
                "kept": {"epoch": 1 if kept > start else 0, "agreement": max(kept, start), "cosine": 0.4}}

    assert "within the split's noise (+1 of 39 images" in verdict(selection(39, 11 / 39, 12 / 39), "mlp")
    assert verdict(selection(1000, 0.3, 0.4), "mlp").startswith("the mlp bridge earned its place: epoch 1")
    assert "did not beat its affine warm start on the 39 held-out images" in verdict(selection(39, 0.3, 0.2), "mlp")
    assert verdict(selection(39, 0.3, 0.4), "linear") == "kept epoch 1 of 1: held-out agreement 0.400; warm start 0.300"
