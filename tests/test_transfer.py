"""transfer (Zoom-shot, ttc, lstsq) and the shared training loop, on tiny models and data built here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import LINEAR_WORDS, linear_images, linear_pair
from PIL import Image
from torch import nn

from zeroshift.cache import embed, load_features
from zeroshift.data.memory import ArraySource
from zeroshift.errors import CacheError, CacheMismatch, DataError, ZeroshiftError
from zeroshift.methods.transfer import (
    BridgeTask,
    PGKDLoss,
    Prompts,
    TransferConfig,
    Views,
    fit,
    loss_weights,
    make_losses,
    transfer,
)
from zeroshift.models.bridge import Bridge
from zeroshift.train.loop import TrainConfig, lr_factor, plot_history, train
from zeroshift.zeroshot.classifier import classify, zeroshot_weights

TEACHER, ENCODER = "tiny-clip:seed=0", "tiny-clip:seed=1,dim=24"
WORDS = list(LINEAR_WORDS)  # the prompt vocabulary of linear_case
pytestmark = pytest.mark.usefixtures("home")


def _agreement(bridge: Bridge, src, tch, weights) -> float:
    with torch.no_grad():
        mapped = bridge(src.torch())
    return (classify(mapped, weights).argmax(1) == classify(tch.torch(), weights).argmax(1)).float().mean().item()


def _cfg(**kw) -> TransferConfig:
    return TransferConfig(**{"teacher": TEACHER, "encoder": ENCODER, "data": "x", "out": "unused", **kw})


def test_lstsq_recovers_a_linear_teacher(linear_case):
    src, tch, _, weights = linear_case
    result = fit(_cfg(method="lstsq", ridge=0.0, holdout=0.0), src, tch, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(result.bridge(src.torch()), tch.torch(), atol=1e-3, rtol=1e-3)
    assert _agreement(result.bridge, src, tch, weights) == 1.0
    assert result.history == [] and result.rows == (240, 240)


def test_zoomshot_learns_a_linear_teacher_and_keeps_its_warm_start(linear_case):
    src, tch, prompts, weights = linear_case
    untrained = Bridge(16, 32)
    untrained.set_alignment(*_moments_of(src, tch))
    before = _agreement(untrained, src, tch, weights)
    scratch = fit(_cfg(warm_start=False, epochs=30, lr=1e-2, batch_size=32, losses=("mse", "pgkd")),
                  src, tch, prompts, progress=False)
    after = _agreement(scratch.bridge, src, tch, weights)
    assert after >= 0.85 and after > before + 0.3, (before, after)
    losses = [r["loss"] for r in scratch.history if "loss" in r]
    assert losses[-1] < losses[0] / 10
    warm = fit(_cfg(), src, tch, prompts, progress=False)  # the defaults: closed form, then one epoch
    lstsq = fit(_cfg(method="lstsq"), src, tch, progress=False, vocabulary=weights)
    assert _agreement(warm.bridge, src, tch, weights) >= _agreement(lstsq.bridge, src, tch, weights) - 0.02


def _moments_of(src, tch):
    from zeroshift.models.bridge import Moments

    m = Moments(scatter=False)
    m.update(src.torch(), tch.torch())
    return m, m, 0, 1


def test_ttc_recipe_fits_the_linear_teacher(linear_case):
    src, tch, _, weights = linear_case
    result = fit(_cfg(method="ttc", epochs=20), src, tch, progress=False, vocabulary=weights)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert result.bridge.center is False and result.history[0]["lr"] == 0.01 and losses[-1] < losses[0] / 5
    assert _agreement(result.bridge, src, tch, weights) > 0.7


# ---------------------------------------------------------------- loss terms
def _views(bridge: Bridge, text: torch.Tensor, paired: bool = True) -> Views:
    zs, zc = torch.randn(6, 16) * 2 + 1, torch.randn(6 if paired else 5, 32)
    us = bridge.to_source(zs)
    return Views(us=us, uc=bridge.to_teacher(zc), hs=bridge.h(us), ut=bridge.to_teacher(text), zc=zc)


@pytest.mark.parametrize("paired", [True, False])
def test_every_term_switchable_and_its_gradient_flows(paired):
    torch.manual_seed(0)
    prompts = Prompts(tuple(WORDS), torch.randn(len(WORDS), 32), len(WORDS))
    losses = ("mse", "cycle", "pgkd") if paired else ("cycle", "pgkd")
    cfg = _cfg(losses=losses, **({} if paired else {"unpaired_data": "y"}))
    bridge = Bridge(16, 32)
    task = BridgeTask(bridge, make_losses(cfg, prompts), prompts, paired)
    terms, _ = task.step({"source": torch.randn(6, 16), "teacher": torch.randn(6 if paired else 5, 32),
                          "text": torch.tensor([0, 2, 3, 1])})
    expected = {"cycle_source", "cycle_teacher", "cycle_text"} | (
        {"mse", "pgkd"} if paired else {"pgkd_cycle", "pgkd_marginal"})
    assert set(terms) == expected
    needs_g = {"cycle_source", "cycle_teacher", "cycle_text", "pgkd_cycle"}
    for name, value in terms.items():
        bridge.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        assert bridge.h.weight.grad is not None and bridge.h.weight.grad.abs().sum() > 0, name
        g_grad = bridge.g.weight.grad
        assert (g_grad is not None and g_grad.abs().sum() > 0) == (name in needs_g), name
    # a weight of 0, or leaving the name out, turns a term off
    assert set(loss_weights(_cfg(cycle_weight=0.0))) == {"mse", "pgkd"}
    assert set(loss_weights(_cfg(losses=("pgkd",)))) == {"pgkd"}
    with pytest.raises(ZeroshiftError, match="every zoomshot loss term is off"):
        loss_weights(_cfg(losses=("mse",), mse_weight=0.0))


def test_pgkd_lm_is_kl_and_htce_is_cross_entropy_to_the_argmax():
    torch.manual_seed(0)
    classes = F.normalize(torch.randn(7, 32), dim=-1)
    bridge = Bridge(16, 32)
    v = _views(bridge, torch.randn(3, 32))
    student = 10.0 * F.normalize(bridge.from_teacher(v.hs), dim=-1) @ classes.T
    teacher = 10.0 * F.normalize(v.zc, dim=-1) @ classes.T
    p = teacher.softmax(-1)
    kl = (p * (p.log() - student.log_softmax(-1))).sum(1).mean()
    ce = F.cross_entropy(student, teacher.argmax(1))
    lm = PGKDLoss(2.0, classes, 10.0, "lm", paired=True)(bridge, v)["pgkd"]
    ht = PGKDLoss(2.0, classes, 10.0, "htce", paired=True)(bridge, v)["pgkd"]
    torch.testing.assert_close(lm, 2 * kl)
    torch.testing.assert_close(ht, 2 * ce)
    assert not torch.isclose(lm, ht)


# ---------------------------------------------------------------- unpaired mode
def test_unpaired_mode_uses_no_pairing(linear_case):
    """With one batch per epoch, reordering the teacher's images changes nothing unpaired (other images
    do); paired fitting refuses features of different images."""
    src, tch, prompts, _ = linear_case
    _, teacher = linear_pair()
    images = linear_images(240)
    shuffled = embed(teacher, ArraySource(images[np.random.default_rng(1).permutation(240)], "test:shuffled"),
                     progress=False)
    other = embed(teacher, ArraySource(linear_images(240, seed=5), "test:other"), progress=False)
    cfg = _cfg(unpaired_data="y", batch_size=240, epochs=3, lr=1e-2)
    a = fit(cfg, src, tch, prompts, progress=False).bridge.state_dict()
    b = fit(cfg, src, shuffled, prompts, progress=False).bridge.state_dict()
    c = fit(cfg, src, other, prompts, progress=False).bridge.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    assert (a["h.weight"] - c["h.weight"]).abs().max() > 1e-3  # the teacher's images do matter
    with pytest.raises(DataError, match="paired fitting needs both encoders' features of the same images"):
        fit(_cfg(method="lstsq"), src, shuffled, progress=False)


# ---------------------------------------------------------------- the training loop
class _Quadratic(nn.Module):
    """loss = ||w - 3||^2; NaN from batch `nan_at` = (epoch, index) on."""

    def __init__(self, nan_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.w, self.nan_at = nn.Parameter(torch.zeros(4)), nan_at

    def step(self, batch):
        loss = ((self.w - 3) ** 2).sum()
        if self.nan_at is not None and batch >= self.nan_at:
            loss = loss * float("nan")
        return {"quad": loss, "half": 0.5 * loss}, {"w0": self.w[0].item()}


def test_loop_trains_logs_and_plots(tmp_path):
    task = _Quadratic()
    cfg = TrainConfig(epochs=4, lr=0.2, optimizer="sgd", momentum=0.0, log_every=3)
    history = train(task, lambda e: [(e, i) for i in range(5)], cfg, tmp_path, progress=False)
    assert task.w.detach().sub(3).abs().max() < 0.01
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == history and [r["step"] for r in lines] == [1, 3, 6, 9, 12, 15, 18, 20]
    assert {"step", "epoch", "lr", "loss", "loss/quad", "loss/half", "w0", "seconds"} <= set(lines[0])
    assert plot_history(history, tmp_path / "loss.png").stat().st_size > 1000
    cfg = TrainConfig(warmup=0.2)
    assert lr_factor(0, 10, cfg) == 0.5 and lr_factor(2, 10, cfg) == 1.0 and lr_factor(9, 10, cfg) < 0.05
    assert lr_factor(9, 10, TrainConfig(cosine=False)) == 1.0


def test_non_finite_loss_stops_naming_step_and_batch(tmp_path):
    task = _Quadratic(nan_at=(1, 2))
    with pytest.raises(ZeroshiftError, match=r"non-finite loss at step 8 \(epoch 1, batch 2\): quad=nan"):
        train(task, lambda e: [(e, i) for i in range(5)], TrainConfig(epochs=2), tmp_path, progress=False)
    assert task.w.isfinite().all()  # the bad step was not applied


def test_loop_refuses_bad_options():
    with pytest.raises(ZeroshiftError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ZeroshiftError, match="warmup"):
        TrainConfig(warmup=1.5)


# ---------------------------------------------------------------- bad input
def test_nan_features_and_wrong_prompt_dims_are_refused(linear_case, tmp_path):
    src, tch, prompts, _ = linear_case
    copy = Path(shutil.copytree(src.path, tmp_path / "cache"))
    bad = np.load(copy / "shard-00000.npy")
    bad[5, 3] = np.nan
    np.save(copy / "shard-00000.npy", bad)
    with pytest.raises(CacheError, match=r"holds NaN or inf \(source row 5\)"):
        fit(_cfg(method="lstsq", holdout=0.0), load_features(copy, verify=False), tch, progress=False)
    wrong = Prompts(prompts.texts, prompts.embeddings[:, :20], prompts.groups)
    with pytest.raises(CacheMismatch, match="20-d but the teacher features"):
        fit(_cfg(), src, tch, wrong, progress=False)


def _folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    images = linear_images(sum(per_class.values()), seed)
    k = 0
    for name, n in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(images[k]).save(root / name / f"{i}.png")
            k += 1
    return root


def test_bad_inputs_fail_before_any_work(tmp_path):
    one = _folder(tmp_path / "one", {"cat": 1})
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        transfer(_cfg(data=f"folder:{tmp_path / 'empty'}", out=str(out)), progress=False)
    with pytest.raises(DataError, match="has 1 image"):
        transfer(_cfg(data=f"folder:{one}", out=str(out), runtime="torch"), progress=False)
    two = _folder(tmp_path / "two", {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match="leaves 1 of the 4 images"):
        transfer(_cfg(data=f"folder:{two}", out=str(out), data_fraction=0.3), progress=False)
    empty = tmp_path / "prompts.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ZeroshiftError, match="holds no prompts"):
        transfer(_cfg(data=f"folder:{two}", out=str(out), prompts=str(empty)), progress=False)
    assert not out.exists()
    for kw, msg in [({"method": "ttc", "bridge": "mlp"}, "fixed affine recipe"),
                    ({"method": "lstsq", "unpaired_data": "folder:x"}, "needs --method zoomshot"),
                    ({"unpaired_data": "folder:x", "losses": ("mse", "cycle")}, "needs paired images"),
                    ({"data_fraction": 0.0}, "--data-fraction"), ({"losses": ("l1",)}, "unknown loss"),
                    ({"epochs": 0}, "--epochs"), ({"lr": 0.0}, "--lr")]:
        with pytest.raises(ZeroshiftError, match=msg):
            _cfg(**kw)


# ---------------------------------------------------------------- end to end
def test_transfer_writes_a_run_that_loads_and_classifies(tmp_path):
    import zeroshift

    data = _folder(tmp_path / "data", {"red": 40, "green": 40, "blue": 40})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a photo of a {w}." for w in WORDS) + "\n")
    out = tmp_path / "run"
    cfg = _cfg(data=f"folder:{data}", out=str(out), prompts=str(prompts), eval_data=f"folder:{data}",
               runtime="torch", batch_size=32)
    vlm = transfer(cfg, progress=False)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md", "metrics.jsonl",
                                               "loss.png", "results"}
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "bridge" and config["dims"] == {"encoder": 24, "teacher": 32}
    assert config["losses"] == loss_weights(cfg) and config["data"][0]["rows_used"] == 108  # 12 held out
    assert config["holdout"]["images"] == {"fit": 108, "held": 12} and len(config["holdout"]["ridge"]["grid"]) == 5
    assert config["ridge"] == config["holdout"]["ridge"]["chosen"] and len(config["holdout"]["epochs"]) == 1
    card = (out / "README.md").read_text()
    assert "| held-out selection | 12 images (0.1)" in card and "| ridge |" in card
    assert "| folder:" in card and "zeroshot_classification" in card and f"run:{out}" in card
    assert vlm.spec.startswith(f"run:{out.resolve()}@")
    images = torch.stack([vlm.image_transform(Image.open(data / "red" / f"{i}.png").convert("RGB")) for i in range(4)])
    logits = classify(vlm.encode_image(images), zeroshot_weights(vlm, ["red", "green", "blue"], ["a {c} photo."]))
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    again = zeroshift.load(f"run:{out}")
    torch.testing.assert_close(again.encode_image(images), vlm.encode_image(images))
    with pytest.raises(ZeroshiftError, match="already holds a run"):
        transfer(cfg, progress=False)
    assert len(list((tmp_path / "home" / "prompts").glob("*.safetensors"))) == 1  # encoded once, cached
    lstsq = transfer(_cfg(data=f"folder:{data}", out=str(out), method="lstsq", overwrite=True, runtime="torch",
                          data_fraction=0.5), progress=False)
    assert not (out / "loss.png").exists() and lstsq.spec != vlm.spec
    assert json.loads((out / "config.json").read_text())["data"][0]["rows"] == 60


def test_resume_after_a_kill_gives_the_uninterrupted_bridge(tmp_path, monkeypatch, interrupt_at):
    from safetensors.torch import load_file

    data = _folder(tmp_path / "data", {"red": 30, "green": 30})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a photo of a {w}." for w in WORDS) + "\n")

    def cfg(out: str, **kw) -> TransferConfig:  # unpaired-style cycle terms use the prompt minibatches
        return _cfg(data=f"folder:{data}", out=str(tmp_path / out), prompts=str(prompts), runtime="torch",
                    losses=("mse", "cycle", "pgkd"), batch_size=8, epochs=2, checkpoint_every=3, **kw)

    transfer(cfg("whole"), progress=False)
    step = interrupt_at(BridgeTask, 11)  # mid epoch 2 (8 steps an epoch); the last checkpoint is step 9
    with pytest.raises(KeyboardInterrupt):
        transfer(cfg("run"), progress=False)
    assert not (tmp_path / "run").exists() and (tmp_path / "run.ckpt" / "last.pt").is_file()
    monkeypatch.setattr(BridgeTask, "step", step)
    with pytest.raises(CacheMismatch, match="tau"):  # a checkpoint of another run is refused
        transfer(cfg("run", tau=10.0), progress=False)
    transfer(cfg("run"), progress=False)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "run"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resumed_from_step"] == 9
    assert not (tmp_path / "run.ckpt").exists()
