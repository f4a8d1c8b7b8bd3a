"""align (OTTER): targets, pairs, locked and finetune runs, bad input, resume, and the align -> transfer chain."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import COLOURS, colour_folder
from PIL import Image
from safetensors.torch import load_file

import zeroshift
from zeroshift.errors import DataError, SpecError, ZeroshiftError
from zeroshift.methods.align import (
    AlignConfig,
    AlignTask,
    align,
    collect_pairs,
    soft_targets,
)

IMAGE, TEXT = "tiny-clip:seed=0", "tiny-clip:seed=1"
pytestmark = pytest.mark.usefixtures("home")


def _pairs(root: Path, n: int = 12, extra: list[bytes] | None = None) -> Path:
    """Coloured images in class folders and pairs.csv (path,caption); `extra` raw CSV lines appended."""
    return colour_folder(root, n, 24, captions=("small", "big", "bright"), extra=extra or ()) / "pairs.csv"


def _cfg(tmp_path: Path, **kw) -> AlignConfig:
    csv = tmp_path / "data" / "pairs.csv"
    if not csv.exists():
        _pairs(tmp_path / "data")
    return AlignConfig(**{"image": IMAGE, "text": TEXT, "data": (f"csv:{csv}",), "out": str(tmp_path / "run"),
                          "dim": 16, "epochs": 3, "batch_size": 8, "lr": 1e-2, "runtime": "torch", "device": "cpu",
                          **kw})


# ---------------------------------------------------------------- targets
@pytest.mark.parametrize("loss", ["infonce", "ls", "kd", "ot"])
def test_targets_are_distributions_that_favour_the_pair(tmp_path, loss):
    cfg = _cfg(tmp_path, loss=loss)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    img[3], txt[3] = img[2], txt[2]  # a duplicate pair in the batch
    for teacher in ((img, txt, None, None), (img, txt, torch.randn(6, 5), torch.randn(6, 7))):
        y_it, y_ti = soft_targets(cfg, 6, torch.device("cpu"), teacher)
        for y in (y_it, y_ti):
            assert torch.isfinite(y).all() and torch.allclose(y.sum(-1), torch.ones(6), atol=1e-5)
            assert (y.diagonal() >= (1.0 if loss == "infonce" else cfg.alpha) - 1e-6).all()
    one = soft_targets(cfg, 1, torch.device("cpu"), (img[:1], txt[:1], None, None))
    assert all(torch.equal(y, torch.ones(1, 1)) for y in one)  # a batch of one


def test_pairs_skip_and_count_bad_captions_and_add_noise(tmp_path):
    csv = _pairs(tmp_path / "data", n=4, extra=[b"red/0.png,", b"red/1.png,caf\xe9 au lait", b"red/2.png," + b"w " * 5000])
    source = zeroshift.dataset(f"csv:{csv}")
    pairs = collect_pairs([source], noise=0.0, seed=0)
    assert len(pairs.captions) == 13 and pairs.skipped == {"empty caption": 1, "caption not UTF-8": 1}
    noisy = collect_pairs([source], noise=0.5, seed=0)
    assert noisy.noisy == 6 and sum(a != b for a, b in zip(noisy.captions, pairs.captions)) >= 1
    with pytest.raises(DataError, match="no captions"):
        collect_pairs([zeroshift.dataset(f"folder:{tmp_path / 'data'}")], 0.0, 0)


# ---------------------------------------------------------------- runs
@pytest.mark.parametrize("loss", ["infonce", "ls", "kd", "ot"])
def test_locked_run_loads_and_evaluates(tmp_path, loss):
    cfg = _cfg(tmp_path, loss=loss, eval_data=f"folder:{tmp_path / 'data'}" if loss == "ot" else None)
    vlm = align(cfg, progress=False)
    out = Path(cfg.out)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "aligned" and config["dims"] == {"image": 32, "text": 32, "joint": 16}
    assert config["rows"] == 36 and config["finetuned"] == {} and config["loss"]["name"] == loss
    again = zeroshift.load(f"run:{out}")
    images = torch.stack([vlm.image_transform(Image.open(tmp_path / "data" / "red" / "0.png").convert("RGB"))])
    torch.testing.assert_close(again.encode_image(images), vlm.encode_image(images))
    assert again.encode_text(["a red thing"]).shape == (1, 16)
    if loss == "ot":
        assert "zeroshot_classification" in (out / "README.md").read_text()
        assert (out / "results").is_dir()


def test_training_aligns_the_pairs(tmp_path):
    vlm = align(_cfg(tmp_path, loss="infonce", epochs=30), progress=False)
    names = list(COLOURS)
    images = torch.stack([vlm.image_transform(Image.open(tmp_path / "data" / n / f"{i}.png").convert("RGB"))
                          for n in names for i in range(3)])
    text = torch.nn.functional.normalize(vlm.encode_text([f"a small {n} thing" for n in names]), dim=-1)
    pred = (torch.nn.functional.normalize(vlm.encode_image(images), dim=-1) @ text.T).argmax(1)
    assert (pred == torch.arange(3).repeat_interleave(3)).float().mean() >= 0.9


def test_finetune_trains_the_last_blocks_and_the_run_keeps_them(tmp_path):
    cfg = _cfg(tmp_path, image="student-cnn:width=8,size=32", mode="finetune", loss="ot", epochs=2)
    vlm = align(cfg, progress=False)
    config = json.loads((Path(cfg.out) / "config.json").read_text())
    assert config["finetuned"]["image"] and config["finetuned"]["text"]
    state = load_file(str(Path(cfg.out) / "model.safetensors"))
    assert any(k.startswith("image.") for k in state) and any(k.startswith("text.") for k in state)
    fresh = zeroshift.load("student-cnn:width=8,size=32")
    name = config["finetuned"]["image"][0]
    assert not torch.equal(state[f"image.{name}"], dict(fresh.named_parameters())[name])  # it trained
    again = zeroshift.load(f"run:{cfg.out}")
    images = torch.stack([vlm.image_transform(Image.open(tmp_path / "data" / "red" / "0.png").convert("RGB"))])
    torch.testing.assert_close(again.encode_image(images), vlm.encode_image(images))


def test_missing_images_are_skipped_and_bad_options_refused(tmp_path):
    csv = _pairs(tmp_path / "data", n=4, extra=[b"red/nope.png,a missing red thing"])
    (tmp_path / "data" / "blue" / "0.png").write_bytes(b"not a png")
    align(_cfg(tmp_path, data=(f"csv:{csv}",), epochs=1), progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["skipped"] == {"image missing or corrupt": 2} and config["rows"] == 11
    for kw, msg in [({"loss": "clip"}, "unknown loss"), ({"mode": "full"}, "unknown mode"), ({"noise": 1.5}, "--noise"),
                    ({"dim": 0}, "--dim"), ({"lam": 0.0}, "--lam"), ({"data": ()}, "at least one")]:
        with pytest.raises(ZeroshiftError, match=msg):
            _cfg(tmp_path, **kw)
    with pytest.raises(SpecError, match="--text student-cnn is an image encoder"):
        align(_cfg(tmp_path, text="student-cnn", out=str(tmp_path / "x")), progress=False)


def test_nan_in_the_cost_names_the_step(tmp_path, monkeypatch):
    step = AlignTask.step

    def poisoned(self, batch):
        if self.step_index == 2:
            batch = {**batch, "image": batch["image"] * float("nan")}
        return step(self, batch)

    monkeypatch.setattr(AlignTask, "step", poisoned)
    with pytest.raises(ZeroshiftError, match="step 3: .*NaN"):
        align(_cfg(tmp_path), progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path, monkeypatch, interrupt_at):
    align(_cfg(tmp_path, out=str(tmp_path / "whole"), checkpoint_every=2), progress=False)
    step = interrupt_at(AlignTask, 8)
    with pytest.raises(KeyboardInterrupt):
        align(_cfg(tmp_path, checkpoint_every=2), progress=False)
    monkeypatch.setattr(AlignTask, "step", step)
    align(_cfg(tmp_path, checkpoint_every=2), progress=False)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_aligned_vlm_teaches_transfer(tmp_path):
    align(_cfg(tmp_path, epochs=2), progress=False)
    bridged = zeroshift.transfer(teacher=f"run:{tmp_path / 'run'}", encoder="tiny-clip:seed=2,dim=24",
                                 data=f"folder:{tmp_path / 'data'}", out=str(tmp_path / "bridge"), method="lstsq",
                                 runtime="torch")
    assert bridged.dim == 16 and bridged.encode_text(["a red thing"]).shape == (1, 16)


@pytest.mark.assets
def test_a_huge_caption_is_truncated_at_the_text_towers_limit():
    minilm = zeroshift.load("minilm")
    limit = minilm.model.max_seq_length
    huge, start = "a red thing " * 5000, "a red thing " * limit
    emb = minilm.encode_text([huge, start])  # [2, 384]
    assert emb.shape == (2, 384) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb[0], emb[1], atol=1e-5, rtol=1e-4)  # only the first tokens count
