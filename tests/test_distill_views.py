"""distill on view caches: each student input is the very view the teacher's target was computed on, the
held-out split is by image, the best epoch is kept, and bad view options are one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import colour_folder

from zeroshift.data.augment import ViewSource, parse_augment
from zeroshift.errors import SpecError, ZeroshiftError, DataError
from zeroshift.methods.distill import DistillConfig, build_rows, distill
from zeroshift.methods.holdout import Split
from zeroshift.models.pixels import pixel_pipeline
from zeroshift.specs import dataset, load

TEACHER = "tiny-clip:seed=0"
STUDENT = "student-cnn:width=8,size=32"
RECIPE = "crop=0.3-1,flip=0.5,jitter=0.4,bg=random,size=48"
pytestmark = pytest.mark.usefixtures("home")


def _cfg(tmp_path: Path, n: int = 4, **kw) -> DistillConfig:
    data = tmp_path / "data"
    if not data.exists():
        colour_folder(data, n, 40, seed=0)  # n per colour, 3 colours
    return DistillConfig(**{"teacher": TEACHER, "student": STUDENT, "data": (f"folder:{data}",),
                            "out": str(tmp_path / "run"), "epochs": 2, "batch_size": 8, "runtime": "torch",
                            "device": "cpu", "precision": "fp32", "views": 3, "augment": RECIPE,
                            "holdout": 0.25, **kw})


def test_every_training_row_is_the_teachers_embedding_of_the_students_view(tmp_path):
    cfg = _cfg(tmp_path)
    teacher, source = load(TEACHER, runtime="torch"), dataset(cfg.data[0])
    student = load(STUDENT, runtime="torch")
    pixel_encoder, finish = pixel_pipeline(student.image_transform)
    recipe = parse_augment(RECIPE)
    prep = build_rows(teacher, pixel_encoder, [source], False, "torch", False, 3, recipe, 0.25, 0)
    views = ViewSource(source, 3, recipe)
    rows = prep.rows
    picked = rows.index[:6]  # global pixel rows = view rows of the one source
    for i, r in enumerate(picked):
        image = views.load_image(int(r))
        with torch.no_grad():
            want = teacher.encode_image(teacher.image_transform(image)[None]).float()[0]  # [d]
        assert torch.allclose(rows.targets[i], want, atol=1e-4), r
        assert torch.equal(rows.images(np.array([i]))[0], pixel_encoder.image_transform(image))
    images_fit = {int(r) // 3 for r in rows.index}
    assert len(images_fit) == 9 and len(rows) == 27  # 12 images, 3 held out by image, 3 views each
    assert prep.held_images.shape[0] == 3 and prep.held_targets.shape[0] == 3  # their plain views only


def test_distill_on_views_keeps_the_best_held_out_epoch(tmp_path):
    vlm = distill(_cfg(tmp_path, epochs=3, ema=0.5), progress=False)
    config = json.loads((Path(tmp_path / "run") / "config.json").read_text())
    assert config["views"]["count"] == 3 and config["rows"] == 27
    kept = config["holdout"]["kept"]
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [r["eval/holdout_agreement"] for r in evals if "eval/holdout_agreement" in r]
    assert len(scores) == 3 and kept["kept_epoch"] == int(np.argmax(scores))
    assert kept["kept_score"] == pytest.approx(max(scores))
    card = (tmp_path / "run" / "README.md").read_text()
    assert "3 cached views per image" in card and "model selection" in card
    assert vlm.image is not None


@pytest.mark.parametrize("kw, words", [
    ({"views": 0}, "--views is the number of views"),
    ({"views": -2}, "--views is the number of views"),
    ({"augment": "zoom=2"}, "unknown augmentation 'zoom'"),
    ({"augment": "crop=0-1.5"}, "out of range"),
    ({"augment": "light"}, "--student-augment"),
    ({"holdout": 1.0}, "--holdout"),
    ({"ema": 1.0}, "--ema"),
    ({"student_augment": "heavy"}, "unknown student augment"),
])
def test_bad_view_options_are_one_line_errors(tmp_path, kw, words):
    with pytest.raises((SpecError, ZeroshiftError), match=words) as e:
        _cfg(tmp_path, **kw)
    assert "\n" not in str(e.value)


def test_a_holdout_that_leaves_no_fit_images_fails_before_any_model(tmp_path):
    with pytest.raises(DataError, match="leaves 1 fit image") as e:
        distill(_cfg(tmp_path / "small", n=1, holdout=0.5), progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "small" / "run").exists()


def test_distill_splits_once_and_build_rows_uses_that_very_split(tmp_path, monkeypatch):
    import zeroshift.methods.distill as distill_module
    from zeroshift.methods.holdout import Split

    cfg = _cfg(tmp_path)
    teacher, source = load(TEACHER, runtime="torch"), dataset(cfg.data[0])
    pixel_encoder, _ = pixel_pipeline(load(STUDENT, runtime="torch").image_transform)
    given = Split(fit=np.arange(2, 12), held=np.array([0, 1]))  # not the seeded split: its rows must follow it
    prep = build_rows(teacher, pixel_encoder, [source], False, "torch", False, 3, parse_augment(RECIPE), 0.25, 0,
                      splits=[given])
    assert prep.entries[0]["images_held_out"] == 2 and prep.entries[0]["held_out_used"] == 2
    assert (prep.rows.pixels.caches[0].index[prep.rows.index] // 3 >= 2).all()  # no view of image 0 or 1 trains
    made, passed = [], []
    real_split = distill_module.split_sources
    monkeypatch.setattr(distill_module, "split_sources", lambda *a: made.append(real_split(*a)) or made[-1])
    monkeypatch.setattr(distill_module, "build_rows", lambda *a, splits=None: passed.append(splits) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # stopped right after the rows would be built
        distill(cfg, progress=False)
    assert len(made) == 1 and passed[0] is made[0]


def test_mixed_views_train_on_their_blends_and_never_show_a_held_out_image(tmp_path):
    cfg = _cfg(tmp_path)
    teacher, source = load(TEACHER, runtime="torch"), dataset(cfg.data[0])
    pixel_encoder, _ = pixel_pipeline(load(STUDENT, runtime="torch").image_transform)
    recipe = parse_augment(RECIPE + ",mix=1")
    split = Split(fit=np.arange(3, 12), held=np.arange(3))
    prep = build_rows(teacher, pixel_encoder, [source], False, "torch", False, 3, recipe, 0.25, 0, splits=[split])
    views = ViewSource(source, 3, recipe)
    rows = prep.rows.pixels.caches[0].index[prep.rows.index]  # view rows that train
    partners = views.partner(rows)
    assert not np.isin(partners, split.held).any() and (partners[rows % 3 > 0] >= 0).all()
    everything = split.view_rows(3)[0]
    dropped = everything[np.isin(views.partner(everything), split.held)]
    assert len(dropped) and len(rows) == len(everything) - len(dropped)  # only the views blending a held image
    for i in np.flatnonzero(rows % 3 > 0)[:3]:  # a blend's target is the teacher's embedding of that blend
        with torch.no_grad():
            want = teacher.encode_image(teacher.image_transform(views.load_image(int(rows[i])))[None]).float()[0]
        assert torch.allclose(prep.rows.targets[i], want, atol=1e-4)


def test_other_view_settings_never_mix_into_a_cache(tmp_path):
    cfg = _cfg(tmp_path)
    teacher, source = load(TEACHER, runtime="torch"), dataset(cfg.data[0])
    pixel_encoder, _ = pixel_pipeline(load(STUDENT, runtime="torch").image_transform)
    a = build_rows(teacher, pixel_encoder, [source], False, "torch", False, 3, parse_augment(RECIPE), 0.25, 0)
    b = build_rows(teacher, pixel_encoder, [source], False, "torch", False, 3,
                   parse_augment(RECIPE.replace("seed", "x") + ",seed=5"), 0.25, 0)
    assert {p.path for p in a.rows.pixels.caches}.isdisjoint({p.path for p in b.rows.pixels.caches})
    assert not torch.allclose(a.rows.targets, b.rows.targets)


def test_online_teacher_on_its_cached_pixels_gives_the_cached_targets(tmp_path):
    from zeroshift.methods.distill import online_teacher

    cfg = _cfg(tmp_path)
    teacher, source = load(TEACHER, runtime="torch"), dataset(cfg.data[0])
    pixel_encoder, _ = pixel_pipeline(load(STUDENT, runtime="torch").image_transform)
    teacher_pixels, teacher_finish = pixel_pipeline(teacher.image_transform)
    prep = build_rows(teacher, pixel_encoder, [source], False, "torch", False, 3, parse_augment(RECIPE), 0.25, 0,
                      teacher_pixels)
    rows = prep.rows
    first = np.arange(5)
    online = online_teacher(teacher, teacher_finish)(rows.teacher_pixels(rows.teacher_index[first]))  # [5, d]
    assert torch.allclose(online, rows.targets[first], atol=1e-4)
    batch = next(iter(rows.batches(4, 0, "none", mixup=0.4)(0)))
    assert batch["teacher_pixels"].dtype == torch.uint8 and batch["teacher_pixels"].shape[0] == 4
    plain = next(iter(rows.batches(4, 0, "none")(0)))
    assert not torch.equal(batch["pixels"], plain["pixels"])  # mixed with a permutation of the batch


def test_distill_with_mixup_trains_on_online_targets(tmp_path):
    distill(_cfg(tmp_path, views=2, mixup=0.4, epochs=1, holdout=0.0), progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["mixup"] == 0.4 and config["rows"] == 24


def test_mixup_refuses_captions(tmp_path):
    with pytest.raises(ZeroshiftError, match="--mixup mixes two images"):
        _cfg(tmp_path, mixup=0.2, loss="contrastive-text")
