"""The synthetic: data source: a tiny clip-art folder in tmp_path, a tiny random diffusers pipeline,
and (assets) the real openclipart catalogue with Fashion-MNIST's classes."""
import json
import os
import sys
import time

import numpy as np
import pytest
from PIL import Image

import zeroshift
from zeroshift.cache import embed
from zeroshift.data import fetch
from zeroshift.data.catalogue import FASHION_MNIST_CLASSES
from zeroshift.data.synthetic import clipart_files, prompts
from zeroshift.data.synthetic.clipart import Style, style_of
from zeroshift.errors import DataError, MissingBackend, SpecError

pytestmark = pytest.mark.usefixtures("home")  # nothing fetched, renders kept in tmp_path


def art(path, colour, size=(40, 28), shape="ellipse"):
    """An RGBA clip art: a coloured shape on a transparent background."""
    from PIL import ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    box = (3, 3, size[0] - 4, size[1] - 4)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=colour + (255,))
    im.save(path)
    return path


@pytest.fixture
def clipart(tmp_path):
    root = tmp_path / "clipart"
    art(root / "animals" / "cat_01.png", (250, 120, 20))
    art(root / "animals" / "dogs_big.png", (120, 70, 20), (30, 44))
    art(root / "animals" / "wild" / "tiger_stripes_01.png", (240, 200, 0))
    art(root / "clothing" / "shirt_red.png", (220, 20, 30), shape="rect")
    art(root / "clothing" / "hiking_boot_01.png", (90, 60, 40), (36, 36))
    art(root / "misc" / "star.png", (30, 90, 250), (24, 24), shape="rect")
    return root


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def names(tmp_path):
    return write(tmp_path / "classes.txt", "cat\n# a comment\n\ndog\nshirt\nankle boot\nunicorn\n")


def spec(clipart, names, **opts):
    extra = "".join(f",{k}={v}" for k, v in opts.items())
    return f"synthetic:classes={names},clipart={clipart}{extra}"


def pixels(im):
    return np.asarray(im, dtype=np.int16)  # [H, W, 3]


# ------------------------------------------------------------------------------- rows and images

def test_rows_labels_captions_and_canonical_spec(clipart, names):
    ds = zeroshift.dataset(spec(clipart, names, n=23, size=48))
    assert ds.classes == ["cat", "dog", "shirt", "ankle boot", "unicorn"]
    assert len(ds) == 23 and list(ds.keys[:2]) == ["000000", "000001"] and ds.keys[-1] == "000022"
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (23,)
    assert sorted(np.bincount(ds.labels, minlength=5).tolist()) == [4, 4, 5, 5, 5]  # classes evenly covered
    for label, caption in zip(ds.labels, ds.captions):
        assert ds.classes[label] in caption
    assert "a photo of an ankle boot." in ds.prompts and "a photo of a cat." in ds.prompts
    assert len(set(ds.prompts)) == 5 * len(prompts.DEFAULT_CONTEXTS)
    assert ds.spec == (f"synthetic:classes={names},contexts=default,n=23,seed=0,size=48,"
                       f"renderer=clipart,clipart={clipart}")
    assert zeroshift.dataset(ds.spec).fingerprint() == ds.fingerprint()  # the canonical spec rebuilds it


def test_rows_cycle_through_every_prompt(clipart, names):
    ds = zeroshift.dataset(spec(clipart, names, n=2 * 5 * 12 + 3))  # 5 classes x 12 contexts = 60 prompts
    assert len(set(ds.captions[:60])) == 60 and ds.captions[60:] == ds.captions[:63]
    assert ds.labels[60:].tolist() == ds.labels[:63].tolist()
    for start in range(0, 60, 5):  # every run of 5 rows holds each class once
        assert sorted(ds.labels[start:start + 5].tolist()) == [0, 1, 2, 3, 4]


def test_images_are_deterministic_rgb_and_sized(clipart, names):
    ds = zeroshift.dataset(spec(clipart, names, n=12, size=48))
    first = [pixels(ds.load_image(i)) for i in range(12)]
    assert all(a.shape == (48, 48, 3) for a in first) and ds.load_image(0).mode == "RGB"
    clipart_files._CACHE.clear()  # a cold cache, a reversed order and a fresh build give the same pixels
    again = zeroshift.dataset(spec(clipart, names, n=12, size=48))
    for i in reversed(range(12)):
        assert np.array_equal(pixels(again.load_image(i)), first[i])
    assert len({a.tobytes() for a in first}) == 12  # rows differ
    other_seed = zeroshift.dataset(spec(clipart, names, n=12, size=48, seed=1))
    assert not np.array_equal(pixels(other_seed.load_image(0)), first[0])
    with pytest.raises(IndexError):
        ds.load_image(12)


def test_fingerprint_follows_options_and_the_clipart_set(clipart, names, tmp_path):
    base = zeroshift.dataset(spec(clipart, names, n=10)).fingerprint()
    assert zeroshift.dataset(spec(clipart, names, n=10)).fingerprint() == base
    contexts = write(tmp_path / "contexts.txt", "a photo of a {c}.\n")
    variants = [spec(clipart, names, n=11), spec(clipart, names, n=10, seed=1), spec(clipart, names, n=10, size=64),
                spec(clipart, names, n=10, contexts=contexts)]
    prints = {zeroshift.dataset(v).fingerprint() for v in variants}
    assert len(prints) == 4 and base not in prints
    art(clipart / "misc" / "moon.png", (200, 200, 200))
    assert zeroshift.dataset(spec(clipart, names, n=10)).fingerprint() not in prints | {base}


def test_classes_from_a_data_spec(clipart, tmp_path):
    for name in ("cat", "sea_lion"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "photos" / name / "a.png")
    ds = zeroshift.dataset(f"synthetic:classes=folder:{tmp_path / 'photos'},clipart={clipart},n=4")
    assert ds.classes == ["cat", "sea lion"] and f"classes=folder:{tmp_path / 'photos'}," in ds.spec
    assert ds.unmatched_classes == ["sea lion"]


# ----------------------------------------------------------------------------- matching and style

def test_class_names_match_clipart_path_words(clipart, names):
    ds = zeroshift.dataset(spec(clipart, names, n=5))
    matched = {c: sorted(ds.relpaths[k] for k in m) for c, m in zip(ds.classes, ds.candidates)}
    assert matched["cat"] == ["animals/cat_01.png"]
    assert matched["dog"] == ["animals/dogs_big.png"]  # plural tolerant
    assert matched["shirt"] == ["clothing/shirt_red.png"]
    assert matched["ankle boot"] == ["clothing/hiking_boot_01.png"]  # falls back to the head word
    assert ds.unmatched_classes == ["unicorn"] and len(matched["unicorn"]) == 6  # any clip art
    assert clipart_files.match_classes(["animal", "t-shirt/top", "tiger"], ds.relpaths)[0].size == 3  # folder words
    assert clipart_files.class_words("t-shirt/top") == [["shirt"], ["top"]]
    assert prompts.prompt("a {c} in a scene.", "apple") == "an apple in a scene."


def test_context_phrases_drive_the_style(clipart, tmp_path):
    s = style_of
    assert s("a close-up photo of a {c}.").scale[0] > s("a photo of a {c}.").scale[0] > s("a small {c}.").scale[1] - 0.5
    assert s("a photo of a small {c}.").scale[1] < 0.5 and s("a black and white photo of a {c}.").gray == 1.0
    assert s("a {c} on a plain background.").background == "plain" and s("a {c} in a scene.").background == "scene"
    assert s("a photo of a {c}.") == Style()
    names = write(tmp_path / "names.txt", "cat\nshirt\n")
    contexts = write(tmp_path / "ctx.txt", "a close-up photo of a {c} on a plain background.\n"
                                            "a photo of a small {c} on a plain background.\n"
                                            "a black and white photo of a {c}.\n")
    ds = zeroshift.dataset(f"synthetic:classes={names},contexts={contexts},clipart={clipart},n=60,size=40")
    covered = {0: [], 1: []}
    for i in range(len(ds)):
        a = pixels(ds.load_image(i))
        k = int(ds.context_index[i])
        if k == 2:
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()  # grayscale
            continue
        _, counts = np.unique(a.reshape(-1, 3), axis=0, return_counts=True)
        covered[k].append(1 - counts.max() / counts.sum())  # the rest of a solid background is the object
    close_up, small = np.mean(covered[0]), np.mean(covered[1])
    assert close_up > 2 * small and 0.02 < small < 0.3, (close_up, small)


def test_corrupt_clipart_is_skipped(clipart, tmp_path):
    (clipart / "broken").mkdir()
    (clipart / "broken" / "vase_01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    names = write(tmp_path / "names.txt", "vase\n")
    ds = zeroshift.dataset(f"synthetic:classes={names},clipart={clipart},n=4,size=32")
    assert ds.unmatched_classes == []  # the name matches, the file is unreadable
    assert all(ds.load_image(i).size == (32, 32) for i in range(4))  # drawn from the other clip art


# ---------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("options, key", [
    ("n=0", "n"), ("size=4", "size"), ("seed=x", "seed"), ("colour=red", "colour"), ("renderer=paint", "renderer"),
    ("steps=3", "steps"), ("n", "n"), ("n=2,n=3", "n"), ("classes=no_such_file.txt", "classes"),
    ("renderer=diffusers", "pipeline"), ("renderer=diffusers,pipeline=x,guidance=abc", "guidance"),
    ("renderer=diffusers,pipeline=x,clipart=y", "clipart"), ("contexts=absent.txt", "contexts"),
])
def test_bad_options_name_the_key(clipart, options, key):
    with pytest.raises(SpecError, match=key) as info:
        zeroshift.dataset(f"synthetic:clipart={clipart},{options}" if "renderer" not in options
                          else f"synthetic:{options}")
    assert "\n" not in str(info.value)


def test_empty_prompt_sets(clipart, names, tmp_path):
    empty = write(tmp_path / "empty.txt", "# nothing\n\n")
    no_c = write(tmp_path / "no_c.txt", "a photo of a {c}.\na photo.\n")
    for options in (f"classes={empty}", f"classes={names},contexts={empty}", f"classes={names},contexts={no_c}"):
        with pytest.raises(DataError, match="empty synthetic prompt set"):
            zeroshift.dataset(f"synthetic:clipart={clipart},{options}")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")  # a source without classes
    with pytest.raises(DataError, match="empty synthetic prompt set"):
        zeroshift.dataset(f"synthetic:clipart={clipart},classes=folder:{tmp_path / 'flat'}")


def test_missing_openclipart_says_fetch(names, tmp_path):
    for s in ("synthetic:", f"synthetic:classes={names},n=5"):
        with pytest.raises(DataError, match="zeroshift data fetch openclipart") as info:
            zeroshift.dataset(s)
        assert "clipart=DIR" in str(info.value)
    with pytest.raises(DataError, match="not a folder"):
        zeroshift.dataset(f"synthetic:classes={names},clipart={tmp_path / 'absent'}")


# ---------------------------------------------------------------------------------- in a loader

def test_embed_with_workers_matches_a_single_process(clipart, names, tmp_path):
    ds = zeroshift.dataset(spec(clipart, names, n=24, size=32))
    serial = embed("tiny-clip:seed=0", ds, out=tmp_path / "w0", workers=0, batch_size=5, progress=False)
    parallel = embed("tiny-clip:seed=0", ds, out=tmp_path / "w2", workers=2, batch_size=5, progress=False)
    assert parallel.summary["workers"] == 2 and len(parallel) == 24
    assert np.array_equal(serial.numpy(), parallel.numpy())
    assert parallel.labels.tolist() == ds.labels.tolist() and parallel.captions == ds.captions


# ------------------------------------------------------------------------------------- diffusers

def tiny_pipeline(folder):
    """A randomly initialised, tiny Stable Diffusion pipeline saved to `folder` (16 px renders)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz.-/,":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    write(folder / "vocab.json", json.dumps(vocab))
    write(folder / "merges.txt", "#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def test_diffusers_renders_once_and_resumes(tmp_path, names):
    pytest.importorskip("diffusers")
    pipe = tiny_pipeline(tmp_path / "tiny")
    s = f"synthetic:renderer=diffusers,pipeline={pipe},n=3,steps=2,size=32,classes={names},batch=2"
    ds = zeroshift.dataset(s, progress=False)
    assert ds.rendered == 3 and ds.folder.parent == tmp_path / "home" / "synthetic"
    assert ds.spec.endswith(f"renderer=diffusers,pipeline={pipe},steps=2,guidance=7.5,batch=2")
    files = [ds.file(i) for i in range(3)]
    images = [ds.load_image(i) for i in range(3)]
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in images)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = zeroshift.dataset(s, progress=False)  # a second build reuses every file
    assert again.rendered == 0 and [f.stat().st_mtime_ns for f in files] == mtimes
    files[2].unlink()  # an interrupted run: only the missing image is drawn, and it is the same image
    stale = ds.folder / f".{files[2].name}.999-deadbeef.tmp"  # the half-written file a killed run left
    stale.write_bytes(b"half a png")
    os.utime(stale, (1, 1))
    resumed = zeroshift.dataset(s, progress=False)
    assert resumed.rendered == 1 and [f.stat().st_mtime_ns for f in files[:2]] == mtimes[:2]
    assert np.array_equal(pixels(resumed.load_image(2)), pixels(images[2]))
    assert not list(ds.folder.glob(".*tmp*"))


def test_diffusers_errors(tmp_path, names, monkeypatch, home):
    (tmp_path / "not_a_pipeline").mkdir()
    s = f"synthetic:renderer=diffusers,pipeline={tmp_path / 'not_a_pipeline'},n=2,classes={names}"
    monkeypatch.setitem(sys.modules, "diffusers", None)  # not installed
    with pytest.raises(MissingBackend, match="pip install diffusers"):
        zeroshift.dataset(s, progress=False)
    monkeypatch.delitem(sys.modules, "diffusers")
    pytest.importorskip("diffusers")
    with pytest.raises(DataError, match="cannot load a diffusion pipeline") as info:
        zeroshift.dataset(s, progress=False)
    assert "\n" not in str(info.value) and not (home / "synthetic").exists()


# ------------------------------------------------------------------------------ real openclipart

@pytest.mark.assets
def test_real_openclipart_with_fashion_mnist_classes(monkeypatch):
    monkeypatch.delenv("ZEROSHIFT_HOME")
    if not (fetch.is_fetched("openclipart") and fetch.is_fetched("fashion-mnist")):
        pytest.skip("needs `zeroshift data fetch openclipart` and `zeroshift data fetch fashion-mnist`")
    clipart_files._CACHE.clear()
    ds = zeroshift.dataset("synthetic:classes=fashion-mnist,n=50,size=96")
    assert ds.classes == FASHION_MNIST_CLASSES and len(ds) == 50
    t0 = time.perf_counter()
    images = [ds.load_image(i) for i in range(50)]
    ms = (time.perf_counter() - t0) / 50 * 1000
    assert all(im.size == (96, 96) and im.mode == "RGB" for im in images)
    matched = len(ds.classes) - len(ds.unmatched_classes)
    print(f"\nsynthetic clipart: {ms:.1f} ms per 96px image (cold cache); "
          f"{matched}/10 fashion-mnist classes matched clip art (unmatched: {ds.unmatched_classes})")
    assert matched >= 5
    assert len({np.asarray(im).tobytes() for im in images}) == 50
    assert os.environ.get("ZEROSHIFT_HOME") is None


def test_classes_joined_from_several_sources(clipart, names, tmp_path):
    more = write(tmp_path / "more.txt", "cat\nzebra\n")
    ds = zeroshift.dataset(f"synthetic:classes={names}+{more},clipart={clipart},n=4")
    first = zeroshift.dataset(f"synthetic:classes={names},clipart={clipart},n=4").classes
    assert ds.classes == first + ["zebra"]  # in order, a repeated name once
