"""View caches (issue 14, item 1): the seeded view recipe, views identical for every model that reads them,
transparent images on varied backgrounds, `embed --views`, refusals of bad options and of caches made with
other settings, and a kill in the middle of building views resuming to the uninterrupted cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import colour_folder, grey_source, one_line, torchrun
from PIL import Image

import zeroshift
from zeroshift.cache import embed, load_features
from zeroshift.cache.views import check_views, embed_views
from zeroshift.cli.main import main
from zeroshift.data.augment import Augment, ViewSource, parse_augment, plain_view, views_of
from zeroshift.data.images import decode_image
from zeroshift.errors import CacheMismatch, SpecError
from zeroshift.models.pixels import pixel_pipeline
from zeroshift.models.transforms import split_batchable
from zeroshift.specs import dataset

TEACHER = "tiny-clip:seed=0"
pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return colour_folder(tmp_path / "imgs", 3, 24, noise=25)


def _cutouts(root: Path, n: int = 3) -> Path:
    """`root/thing/<i>.png`: opaque red squares in the middle of transparent 40 x 40 RGBA images."""
    (root / "thing").mkdir(parents=True)
    for i in range(n):
        a = np.zeros((40, 40, 4), np.uint8)
        a[12:28, 12:28] = (200, 20 + 10 * i, 20, 255)
        Image.fromarray(a, "RGBA").save(root / "thing" / f"{i}.png")
    return root


# ---------------------------------------------------------------- the recipe
def test_recipe_parses_partial_specs_into_one_canonical_string():
    assert parse_augment(None) == parse_augment("default") == Augment()
    recipe = parse_augment("flip=0,crop=0.5")
    assert recipe.crop == (0.5, 0.5) and recipe.flip == 0 and recipe.jitter == Augment().jitter
    assert parse_augment(recipe.canonical()) == recipe  # canonical text round-trips
    assert Augment().canonical() == "crop=0.35-1,flip=0.5,jitter=0.4,bg=random,size=256,seed=0"
    assert parse_augment("none").identity and not Augment().identity
    mixed = parse_augment("mix=0.5")
    assert mixed.canonical() == Augment().canonical() + ",mix=0.5"  # only when on: older caches keep their names
    assert parse_augment(mixed.canonical()) == mixed
    assert not parse_augment("crop=1,flip=0,jitter=0,bg=white,mix=0.5").identity  # a blend is not the plain image


@pytest.mark.parametrize("spec, words", [
    ("blur=2", "unknown augmentation 'blur'"), ("crop=0-1", "0 < A <= B <= 1"), ("crop=0.8-0.5", "0 < A <= B <= 1"),
    ("flip=1.5", "a probability"), ("jitter=1", "a strength"), ("bg=blue", "bg=blue: one of random, white"),
    ("size=8", "canvas side"), ("seed=-1", "seed=-1"), ("flip=x", "not a number"), ("jitter", "needs a value"),
    ("light", "--student-augment light"), ("mix=1.5", "a share of views in [0, 1]"), ("mix=nan", "not a finite"),
])
def test_bad_recipes_are_one_line_errors(spec, words):
    with pytest.raises(SpecError) as e:
        parse_augment(spec)
    assert words in one_line(e)


# ---------------------------------------------------------------- views
def test_views_are_seeded_and_the_same_whatever_decode_side_asks(folder):
    source = dataset(f"folder:{folder}")
    views = ViewSource(source, 4, parse_augment("size=32"))
    assert len(views) == 4 * len(source) and views.keys[:2] == [f"{source.keys[0]}#0", f"{source.keys[0]}#1"]
    assert views.labels.tolist()[:5] == [source.labels[0]] * 4 + [source.labels[1]]
    first = [np.asarray(views.load_image(r, 8)) for r in range(8)]
    again = ViewSource(dataset(f"folder:{folder}"), 4, parse_augment("size=32"))  # a fresh process would do this
    for r in range(7, -1, -1):  # any order, any decode side
        assert np.array_equal(np.asarray(again.load_image(r, 500)), first[r])
    assert all(f.shape == (32, 32, 3) for f in first)
    assert np.array_equal(first[0], np.asarray(plain_view(source.load_image(0), 32)))  # view 0: the image itself
    assert not np.array_equal(first[1], first[2])  # other views differ ...
    other_seed = ViewSource(source, 4, parse_augment("size=32,seed=1"))
    assert not np.array_equal(np.asarray(other_seed.load_image(1)), first[1])  # ... and so do other seeds
    assert views.fingerprint() != other_seed.fingerprint() != source.fingerprint()
    assert views_of(source, 1, "crop=0.5-1") is source  # one view: the images as they are


def test_mixed_views_blend_another_image_and_leave_the_others_as_they_were(folder):
    source = dataset(f"folder:{folder}")
    plain, mixed = (ViewSource(source, 4, parse_augment(f"size=32{extra}")) for extra in ("", ",mix=0.5"))
    rows = np.arange(len(mixed))
    partners = mixed.partner(rows)
    assert (partners[rows % 4 == 0] == -1).all()  # the plain view is never mixed
    assert 0 < (partners >= 0).sum() < len(rows) - len(source)  # about half of the others are
    assert (partners != rows // 4).all() and partners.max() < len(source)  # another image of the source
    again = ViewSource(dataset(f"folder:{folder}"), 4, parse_augment("size=32,mix=0.5"))
    assert np.array_equal(again.partner(rows[::-1]), partners[::-1])  # a function of the row alone
    for r in rows[:12]:
        a, b = np.asarray(mixed.load_image(int(r))), np.asarray(plain.load_image(int(r)))
        assert np.array_equal(a, np.asarray(again.load_image(int(r))))  # seeded
        assert np.array_equal(a, b) == (partners[r] == -1), r  # unmixed views: as without mix
    assert mixed.fingerprint() != plain.fingerprint()
    assert (ViewSource(source, 4, parse_augment("size=32,mix=1")).partner(rows)[rows % 4 > 0] >= 0).all()


def test_transparent_images_are_put_on_varied_backgrounds(tmp_path):
    root = _cutouts(tmp_path / "cut")
    assert decode_image(root / "thing" / "0.png", alpha=True).mode == "RGBA"
    assert decode_image(root / "thing" / "0.png").mode == "RGB"  # as before: on white
    source = dataset(f"folder:{root}")
    corners = {}
    for bg in ("random", "white"):
        views = ViewSource(source, 6, parse_augment(f"bg={bg},crop=1,flip=0,jitter=0,size=32"))
        corners[bg] = [tuple(np.asarray(views.load_image(r))[0, 0]) for r in range(6)]
    assert corners["white"] == [(255, 255, 255)] * 6
    assert corners["random"][0] == (255, 255, 255)  # the plain view stays on white
    assert len(set(corners["random"][1:])) >= 3  # the others on backgrounds that vary


def test_teacher_and_student_caches_hold_the_same_views_row_for_row(folder, tmp_path):
    teacher = zeroshift.load(TEACHER, runtime="torch")
    student = zeroshift.load("student-cnn:width=8,size=24", runtime="torch")
    encoder, finish = pixel_pipeline(student.image_transform)
    views = ViewSource(dataset(f"folder:{folder}"), 3, parse_augment("size=48"))
    tch = embed(teacher, views, tmp_path / "t", shard_rows=4, progress=False)
    pix = embed(encoder, views, tmp_path / "p", dtype=encoder.dtype, shard_rows=5, progress=False)
    assert tch.keys == pix.keys == views.keys and tch.manifest["fingerprint"] == pix.manifest["fingerprint"]
    images = [views.load_image(r) for r in range(len(views))]
    expected = torch.stack([teacher.image_transform(im) for im in images])  # [R, 3, 32, 32]
    torch.testing.assert_close(tch.torch(), teacher.encode_image(expected), atol=1e-5, rtol=1e-5)
    image_part, _ = split_batchable(student.image_transform)
    pixels = torch.stack([image_part(im) for im in images]).flatten(1)  # [R, 3 * 24 * 24] uint8
    assert torch.equal(torch.from_numpy(np.asarray(pix.numpy())).to(torch.uint8), pixels)


# ---------------------------------------------------------------- the command and its refusals
def test_embed_views_command_and_its_refusals(folder, tmp_path, capsys):
    out = tmp_path / "views"
    base = ["embed", "--model", TEACHER, "--data", f"folder:{folder}", "--out", str(out), "--runtime", "torch", "--quiet"]
    assert main([*base, "--views", "3", "--augment", "size=32"]) == 0
    feats = load_features(out)
    assert len(feats) == 27 and feats.keys[1].endswith("#1")
    assert json.loads((out / "config.json").read_text())["views"] == 3
    capsys.readouterr()
    for extra, words in [(["--views", "3", "--augment", "size=32,crop=0.5-1"], "other augmentation settings"),
                         (["--views", "2", "--augment", "size=32"], "never mixed"),
                         ([], "holds 3 views"),
                         (["--views", "0"], "--views must be at least 1; got 0"),
                         (["--views", "-2"], "--views must be at least 1; got -2"),
                         (["--augment", "size=32"], "give --views K"),
                         (["--views", "2", "--augment", "crop=2"], "0 < A <= B <= 1"),
                         (["--views", "2", "--augment", "zoom=2"], "unknown augmentation 'zoom'")]:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, (extra, err)
    assert len(load_features(out)) == 27  # nothing was mixed in or lost
    assert main([*base, "--views", "2", "--augment", "size=32", "--overwrite"]) == 0
    assert len(load_features(out)) == 18


def test_plain_cache_is_not_taken_for_views(folder, tmp_path):
    source = dataset(f"folder:{folder}")
    embed(TEACHER, source, tmp_path / "plain", runtime="torch", progress=False)
    with pytest.raises(CacheMismatch) as e:
        check_views(tmp_path / "plain", views_of(source, 2, "size=32"))
    assert "holds the plain images" in one_line(e)
    check_views(tmp_path / "plain", source)  # the same plain rows: fine


def test_killed_view_embed_resumes_to_the_uninterrupted_cache(folder, tmp_path, monkeypatch, interrupt_at):
    model = zeroshift.load(TEACHER, runtime="torch")
    kwargs = {"views": 4, "augment": "size=32", "shard_rows": 8, "batch_size": 4, "workers": 0, "progress": False}
    whole = embed_views(model, f"folder:{folder}", tmp_path / "whole", **kwargs)
    real = interrupt_at(ViewSource, 21, "load_image")  # a kill in the third of five shards
    with pytest.raises(KeyboardInterrupt):
        embed_views(model, f"folder:{folder}", tmp_path / "cut", **kwargs)
    assert (tmp_path / "cut" / "shard-00001.json").exists() and not (tmp_path / "cut" / "shard-00002.json").exists()
    monkeypatch.setattr(ViewSource, "load_image", real)
    resumed = embed_views(model, f"folder:{folder}", tmp_path / "cut", **kwargs)
    assert resumed.summary["shards_reused"] == 2 and resumed.summary["shards_computed"] == 3
    assert resumed.keys == whole.keys and np.array_equal(resumed.numpy(), whole.numpy())  # bit for bit


TORCHRUN_SCRIPT = """
import sys
import torch.distributed
from helpers import grey_source
from zeroshift.cache.views import embed_views

embed_views("tiny-clip:seed=0", grey_source(12, "views-torchrun", 3), sys.argv[1], views=3, augment="size=32",
            shard_rows=6, batch_size=4, workers=0, runtime="torch", progress=False)
torch.distributed.destroy_process_group()
"""


@pytest.mark.usefixtures("single_process")
def test_torchrun_ranks_split_a_view_cache_and_match_one_process(tmp_path):
    script = tmp_path / "views_dist.py"
    script.write_text(TORCHRUN_SCRIPT)
    done = torchrun(script, tmp_path / "dist", timeout=180,
                    env={"PYTHONPATH": f"{Path(__file__).parent}:{Path(zeroshift.__file__).parents[1]}"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "dist" / f"shard-{i:05d}.json").read_text())["rank"] for i in range(6)]
    assert ranks == [0, 1, 0, 1, 0, 1]  # 36 view rows in 6 shards, split by rank
    single = embed_views(zeroshift.load(TEACHER, runtime="torch"), grey_source(12, "views-torchrun", 3),
                         tmp_path / "single", views=3, augment="size=32", shard_rows=6, progress=False)
    both = load_features(tmp_path / "dist")
    assert both.manifest["fingerprint"] == single.manifest["fingerprint"] and both.keys == single.keys
    np.testing.assert_allclose(both.numpy(), single.numpy(), atol=1e-5, rtol=0)
