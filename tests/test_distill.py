"""distill: losses, batches, the command end to end, resume after a kill, refusals, on tiny models and data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import colour_folder
from PIL import Image
from safetensors.torch import load_file

import zeroshift
from zeroshift.errors import CacheMismatch, DataError, SpecError, ZeroshiftError
from zeroshift.methods import distill as D
from zeroshift.methods.distill import DistillConfig, DistillTask, augment_batch, distill

TEACHER = "tiny-clip:seed=0"
STUDENT = "student-cnn:width=8,size=32"
pytestmark = pytest.mark.usefixtures("home")


def _folder(root: Path, n: int = 16, side: int = 40, seed: int = 0) -> Path:
    return colour_folder(root, n, side, seed=seed)


def _cfg(tmp_path: Path, **kw) -> DistillConfig:
    data = tmp_path / "data"
    if not data.exists():
        _folder(data)
    return DistillConfig(**{"teacher": TEACHER, "student": STUDENT, "data": (f"folder:{data}",),
                            "out": str(tmp_path / "run"), "epochs": 2, "batch_size": 8, "runtime": "torch",
                            "device": "cpu", "precision": "fp32", "views": 1, "holdout": 0.0, **kw})


# ---------------------------------------------------------------- pieces
def test_losses_are_zero_at_the_teacher_and_differentiable():
    t = torch.randn(6, 8)
    batch = {"target": t, "text": torch.arange(6)}
    classes = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    for loss in (D.L2Loss(True), D.L2Loss(False), D.CosineLoss(), D.KLLoss(classes, 100.0)):
        (value,) = loss(t.clone(), batch).values()
        assert value.item() == pytest.approx(0.0, abs=1e-5)
        s = torch.randn(6, 8, requires_grad=True)
        (value,) = loss(s, batch).values()
        value.backward()
        assert value.item() > 0 and s.grad.abs().sum() > 0
    feature = D.ContrastiveFeatureLoss(0.07)
    aligned, shuffled = feature(t * 2, batch)["contrastive-feature"], feature(t.roll(1, 0), batch)["contrastive-feature"]
    assert aligned < shuffled
    text = D.ContrastiveTextLoss(t, 0.07)
    assert text(t, batch)["contrastive-text"] < text(t.roll(1, 0), batch)["contrastive-text"]


def test_augmentation_is_seeded_and_keeps_shape():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for mode in ("none", "flip", "light"):
        a = augment_batch(images, mode, torch.Generator().manual_seed(1))
        b = augment_batch(images, mode, torch.Generator().manual_seed(1))
        assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert torch.equal(augment_batch(images, "none", torch.Generator()), images)
    flips = [augment_batch(images, "flip", torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(torch.equal(f[0], images[0].flip(-1)) for f in flips)


def test_bad_options_fail_before_any_work(tmp_path):
    for kw, msg in [({"loss": "mse"}, "unknown loss"), ({"augment": "heavy"}, "unknown augment"),
                    ({"epochs": 0}, "--epochs"), ({"batch_size": 1}, "--batch-size"), ({"lr": 0.0}, "--lr"),
                    ({"data": ()}, "at least one")]:
        with pytest.raises(ZeroshiftError, match=msg):
            _cfg(tmp_path, **kw)
    with pytest.raises(SpecError, match="--student tiny-clip:seed=1 is a VLM"):
        distill(_cfg(tmp_path, student="tiny-clip:seed=1"), progress=False)
    with pytest.raises(DataError, match="usable image"):
        one = _folder(tmp_path / "one", n=1)
        distill(_cfg(tmp_path, data=(f"folder:{one / 'red'}",)), progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- end to end
def test_distill_writes_a_run_that_loads_exports_and_scores(tmp_path):
    cfg = _cfg(tmp_path, eval_data=f"folder:{tmp_path / 'data'}", epochs=3)
    vlm = distill(cfg, progress=False)
    out = Path(cfg.out)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md", "metrics.jsonl",
                                               "loss.png", "accuracy.png", "results"}
    assert not out.with_name("run.ckpt").exists()  # checkpoints are cleared once the run is written
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "student" and config["dims"]["teacher"] == 32 and config["rows"] == 48
    assert config["input"] == [3, 32, 32] and config["params"] < 50_000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/agreement" in r]
    assert [r["epoch"] for r in evals] == [0, 1, 2] and all(0 <= r["eval/acc1"] <= 1 for r in evals)
    assert "zeroshot_classification" in (out / "README.md").read_text()
    images = torch.stack([vlm.image_transform(Image.open(p).convert("RGB"))
                          for p in sorted((tmp_path / "data" / "red").glob("*.png"))[:4]])
    again = zeroshift.load(f"run:{out}")
    torch.testing.assert_close(again.encode_image(images), vlm.encode_image(images))
    assert again.encode_text(["a red photo"]).shape == (1, 32)
    with pytest.raises(ZeroshiftError, match="already holds a run"):
        distill(cfg, progress=False)
    from zeroshift.export import export

    onnx = export(f"run:{out}", labels=["red", "green", "blue"], out=tmp_path / "student.onnx")
    assert Path(onnx).stat().st_size > 10_000


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path, monkeypatch, interrupt_at):
    whole = _cfg(tmp_path, out=str(tmp_path / "whole"), epochs=3, checkpoint_every=3)
    distill(whole, progress=False)
    cfg = _cfg(tmp_path, epochs=3, checkpoint_every=3)
    step = interrupt_at(DistillTask, 14)  # mid epoch 2; the last checkpoint is step 12
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, progress=False)
    assert not Path(cfg.out).exists() and (tmp_path / "run.ckpt" / "last.pt").is_file()
    monkeypatch.setattr(DistillTask, "step", step)
    with pytest.raises(CacheMismatch, match="student"):  # another student may not pick up this checkpoint
        distill(_cfg(tmp_path, epochs=3, checkpoint_every=3, student="student-cnn:width=8,size=32,seed=1"),
                progress=False)
    distill(cfg, progress=False)
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resumed_from_step"] == 12


def test_nan_loss_stops_with_step_and_batch_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, checkpoint_every=2)
    forward = D.L2Loss.forward
    calls = {"n": 0}

    def poisoned(self, s, batch):
        calls["n"] += 1
        terms = forward(self, s, batch)
        return {k: v * float("nan") for k, v in terms.items()} if calls["n"] >= 5 else terms

    monkeypatch.setattr(D.L2Loss, "forward", poisoned)
    with pytest.raises(ZeroshiftError, match=r"non-finite loss at step 5 \(epoch 0, batch 4\).*step 4"):
        distill(cfg, progress=False)
    assert not Path(cfg.out).exists()
    assert torch.load(tmp_path / "run.ckpt" / "last.pt", weights_only=True)["step"] == 4


def test_small_images_are_upscaled_with_a_warning(tmp_path):
    small = _folder(tmp_path / "small", n=4, side=12)
    with pytest.warns(UserWarning, match="12 px are upscaled to the student's 32 px"):
        distill(_cfg(tmp_path, data=(f"folder:{small}",), epochs=1), progress=False)


@pytest.mark.parametrize("loss", ["cosine", "kl", "contrastive-text", "contrastive-feature"])
def test_every_loss_trains(tmp_path, loss):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red thing\na green thing\na blue thing\n")
    distill(_cfg(tmp_path, loss=loss, prompts=str(prompts), epochs=1), progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["loss"]["name"] == loss
    if loss == "contrastive-text":
        assert config["loss"]["texts"] == 3  # no captions: 'a photo of a {class}.' per folder
