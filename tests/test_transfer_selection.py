"""transfer on views and its label-free held-out selection (issue 14, items 1 and 4): view rows follow their
image into the fit or the held-out split, the ridge and the epoch are chosen by agreement on held-out
images, the best epoch's weights are the ones kept, and bad --views / --holdout / --augment fail in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import linear_images, linear_pair, one_line
from test_transfer import _cfg, _folder

from zeroshift.cache import embed
from zeroshift.cli.main import main
from zeroshift.data.augment import views_of
from zeroshift.data.memory import ArraySource
from zeroshift.errors import CacheMismatch, DataError, SpecError, ZeroshiftError
from zeroshift.methods.selection import verdict
from zeroshift.train.keep import Keeper
from zeroshift.methods.transfer import FitRows, fit, transfer
from zeroshift.models.bridge import Bridge

pytestmark = pytest.mark.usefixtures("home")


def test_view_rows_of_an_image_stay_together_and_held_images_score_on_their_plain_view(module_home):
    source, teacher = linear_pair()
    views = views_of(ArraySource(linear_images(20), "test:few"), 3, "crop=0.5-1,jitter=0.2")
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


def test_no_fit_view_of_a_bridge_blends_in_a_held_out_image(module_home):
    source, teacher = linear_pair()
    views = views_of(ArraySource(linear_images(20), "test:few"), 3, "crop=0.5-1,mix=1")
    src, tch = embed(source, views, progress=False), embed(teacher, views, progress=False)
    rows = FitRows(src, tch, paired=True, views=3, holdout=0.25, seed=0)
    fit_rows, held_images = src.index[rows.ps], src.index[rows.held[0]] // 3
    partners = views.partner(fit_rows)
    assert not np.isin(partners, held_images).any() and (partners[fit_rows % 3 > 0] >= 0).all()
    assert 15 <= len(fit_rows) < 15 * 3 and rows.images == 15  # every fit image's plain view, fewer blends
    assert (tch.index[rows.pc] == fit_rows).all()


def test_ridge_is_chosen_on_the_held_out_images_or_fixed(linear_case):
    src, tch, prompts, _ = linear_case
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


def test_mlp_bridge_keeps_its_best_epoch_and_says_when_linear_wins(linear_case):
    src, tch, prompts, _ = linear_case
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


# ---------------------------------------------------------------- several fit sources
def test_fit_rows_over_two_sources_split_each_by_image_and_read_end_to_end(module_home):
    source, teacher = linear_pair()
    parts = [ArraySource(linear_images(n, seed), f"test:part{seed}") for n, seed in ((20, 1), (30, 2))]
    src = [embed(source, p, progress=False) for p in parts]
    tch = [embed(teacher, p, progress=False) for p in parts]
    rows = FitRows(src, tch, paired=True, holdout=0.2, seed=0)
    assert rows.splits == [(16, 4), (24, 6)] and rows.images == 40 and rows.used == ((16, 24), (16, 24))
    assert len(rows.ps) == 40 and len(rows.held[0]) == 10
    for k, one in enumerate(FitRows(s, t, paired=True, holdout=0.2, seed=0) for s, t in zip(src, tch)):
        mine = rows.ps[(rows.ps >= rows.source.bounds[k]) & (rows.ps < rows.source.bounds[k + 1])]
        assert (mine - rows.source.bounds[k] == one.ps).all()  # each source splits as it does alone
        np.testing.assert_array_equal(rows.source.gather(mine), src[k].gather(one.ps))
    whole = FitRows(src, tch, paired=True)
    assert whole.held is None and whole.used == ((20, 30), (20, 30))
    with pytest.raises(ZeroshiftError, match="a teacher cache per source"):
        FitRows(src, tch[:1], paired=True)
    with pytest.raises(ZeroshiftError, match="at least one source"):
        FitRows([], [], paired=True)
    lone = fit(_cfg(method="lstsq", holdout=0.0), src, tch, progress=False)
    assert lone.rows == (50, 50) and lone.used == ((20, 30), (20, 30))


def test_transfer_on_two_folders_fits_their_union_on_the_caches_each_makes_alone(tmp_path, home, monkeypatch):
    from zeroshift.methods.common import Run

    seen, checkpoints = [], Run.checkpoints
    monkeypatch.setattr(Run, "checkpoints",
                        lambda self, **identity: seen.append(identity) or checkpoints(self, **identity))
    a = _folder(tmp_path / "a", {"red": 6, "green": 6})
    b = _folder(tmp_path / "b", {"blue": 5, "grey": 5}, seed=1)
    out = tmp_path / "run"

    def run(*data, **kw):
        return transfer(_cfg(data=data, out=str(out), method="lstsq", runtime="torch", overwrite=True, **kw),
                        progress=False)

    run(f"folder:{a}")
    run(f"folder:{b}")
    caches = sorted((home / "features").iterdir())
    assert len(caches) == 4  # encoder and teacher, each folder on its own
    run(f"folder:{a}", f"folder:{b}", holdout=0.25)
    assert sorted((home / "features").iterdir()) == caches  # the pair made no cache of its own
    prints = {json.loads((c / "manifest.json").read_text())["fingerprint"] for c in caches}
    assert len(seen[-1]["data"]) == 4 and set(seen[-1]["data"]) == prints  # checkpoints know every source
    config = json.loads((out / "config.json").read_text())
    assert [(d["rows"], d["images_fit"], d["images_held_out"]) for d in config["data"]] == [(12, 9, 3), (10, 8, 2)]
    assert config["holdout"]["images"] == {"fit": 17, "held": 5}
    assert sum(d["rows_used"] for d in config["data"]) == 17
    assert config["options"]["data"] == [f"folder:{a}", f"folder:{b}"]
    card = (out / "README.md").read_text()
    assert f"`folder:{a}`: 9 of 12 images; `folder:{b}`: 8 of 10 images, 5 more held out" in card
    run(f"folder:{a}", f"folder:{b}", holdout=0.0, data_fraction=0.5)
    assert [d["rows"] for d in json.loads((out / "config.json").read_text())["data"]] == [6, 5]  # per source
    with pytest.raises(ZeroshiftError, match="--data needs at least one data spec"):
        _cfg(data=())


def test_a_single_source_run_folder_from_before_still_makes_its_card():
    from zeroshift.methods.transfer import _fit_images

    old = {"data": {"spec": "folder:x", "rows": 120, "views": 1, "rows_used": 108},
           "holdout": {"images": {"fit": 108, "held": 12}}, "views": {"count": 1, "recipe": None}}
    assert _fit_images(old) == "`folder:x`: 108 of 120 images, 12 more held out to choose by"
    assert _fit_images({**old, "holdout": None}) == "`folder:x`: 108 of 120 images"
