"""Checkpoints are read back only when intact and laid out as this zeroshift writes them: a flipped byte,
an edited value, a missing or malformed part, or a task state of another shape is one line that names
the file and says how to start over (issue 17, items 1 and 5)."""
from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import colour_folder, one_line
from torch import nn

from zeroshift.cli.main import main
from zeroshift.errors import CacheError, CacheMismatch
from zeroshift.train import Checkpoints, TrainConfig, train
from zeroshift.train.checkpoint import FORMAT, digest

ID = {"student": "a", "teacher": "b"}
CFG = TrainConfig(epochs=2, lr=0.05, log_every=2, device="cpu")
START_OVER = r"; delete .*ckpt or pass --no-resume to start over$"


class Task(nn.Module):
    """Regression with BatchNorm (running statistics are buffers); `wide` changes the model's shapes."""

    def __init__(self, wide: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, wide), nn.BatchNorm1d(wide), nn.ReLU(), nn.Linear(wide, 2))

    def step(self, batch):
        x, y = batch
        return {"mse": ((self.net(x) - y) ** 2).mean()}, {}


def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + epoch)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(3)]


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoints:
    """A finished two-epoch run's last checkpoint (step 6), as a kill after it would leave it."""
    checkpoints = Checkpoints(tmp_path / "run.ckpt", ID)
    train(Task(), batches, CFG, progress=False, checkpoints=checkpoints)
    assert checkpoints.exists() and checkpoints.saved_step == 6
    return checkpoints


def flip_byte_in_largest_tensor(path: Path) -> None:
    """Flip one bit in the middle of the biggest tensor's storage record, leaving the zip readable."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10  # stored, not compressed
    path.write_bytes(bytes(raw))


def tensors(value) -> list[torch.Tensor]:
    """Every tensor in a nested state, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def rewrite(path: Path, edit, reseal: bool) -> None:
    """torch.load the checkpoint, apply `edit(state)`, torch.save it back; with `reseal` the digest is
    recomputed (an intact file laid out wrongly), without it the edit is silent damage."""
    state = torch.load(path, weights_only=True)
    edit(state)
    if reseal:
        state["digest"] = digest(state)
    torch.save(state, path)


def test_digest_survives_a_round_trip_and_sees_one_changed_value(tmp_path):
    state = {"w": torch.randn(3, 4).t(), "h": torch.randn(5, dtype=torch.bfloat16),
             "opt": {0: {"step": torch.tensor(3.0)}},
             "groups": [{"betas": (0.9, 0.999), "fused": None, "lr": 0.1}], "step": 8, "history": "[]"}
    torch.save(state, tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)
    assert digest(back) == digest(state) == digest({**state, "digest": "anything"})  # the digest is not hashed
    assert digest({**state, "w": state["w"].contiguous()}) == digest(state)  # values, not strides
    changed = {**state, "w": state["w"].clone()}
    changed["w"][1, 2] = torch.nextafter(changed["w"][1, 2], torch.tensor(9.0))  # one ulp
    assert digest(changed) != digest(state)
    assert digest({**state, "step": 8.0}) != digest(state)  # types count: 8.0 is not 8, True is not 1
    assert digest({**state, "step": True}) != digest({**state, "step": 1})
    with pytest.raises(TypeError, match="set"):
        digest({"x": {1, 2}})


def test_a_flipped_byte_inside_a_tensor_is_refused(ckpt):
    before = torch.load(ckpt.path, weights_only=True)
    flip_byte_in_largest_tensor(ckpt.path)
    after = torch.load(ckpt.path, weights_only=True)  # torch reads the damaged file without a word
    assert sum(not torch.equal(a, b) for a, b in zip(tensors(before), tensors(after))) == 1
    with pytest.raises(CacheError) as error:
        train(Task(), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))
    message = one_line(error)
    assert message.startswith(f"checkpoint {ckpt.path} is damaged (its contents do not match the digest")
    assert f"delete {ckpt.folder} or pass --no-resume to start over" in message


@pytest.mark.parametrize("edit", [
    lambda s: s["task"]["net.1.running_var"].__setitem__(3, s["task"]["net.1.running_var"][3] + 0.0068),
    lambda s: s["optimizer"]["state"][0]["exp_avg"].mul_(1.001),
    lambda s: s["rng"]["torch"].__setitem__(100, (int(s["rng"]["torch"][100]) + 1) % 256),
    lambda s: s.__setitem__("step", 5),
    lambda s: s.__setitem__("history", s["history"].replace('"step": 6', '"step": 7')),
    lambda s: s.pop("digest"),
], ids=["bn-variance", "adam-moment", "rng", "step", "history", "no-digest"])
def test_a_silently_edited_checkpoint_is_refused(ckpt, edit):
    rewrite(ckpt.path, edit, reseal=False)
    damaged = r"is damaged \(its contents do not match the digest written with them\)"
    with pytest.raises(CacheError, match=damaged + START_OVER) as error:
        Checkpoints(ckpt.folder, ID).load()
    one_line(error)


@pytest.mark.parametrize("edit, problem", [
    (lambda s: s.pop("identity"), "has no run identity"),
    (lambda s: s.__setitem__("identity", "{not json"), "has a run identity that is not a JSON object"),
    (lambda s: s.__setitem__("identity", '["student"]'), "has a run identity that is not a JSON object"),
    (lambda s: s.__setitem__("history", "[{"), "has a history that is not a JSON list"),
    (lambda s: s.__setitem__("history", "[1, 2]"), "has a history that is not a list of rows"),
    (lambda s: s.pop("task"), "has no task state"),
    (lambda s: s.__setitem__("task", torch.zeros(3)),
     r"has a task state that is a float32 tensor of shape \[3\], not a dict"),
    (lambda s: s.__setitem__("step", "six"), r'has step "six", not a whole number of 0 or more'),
    (lambda s: s.__setitem__("step", 6.0), "has step 6.0, not a whole number of 0 or more"),
    (lambda s: s.__setitem__("index", torch.tensor(0)),
     r"has index an int64 tensor of shape \[\], not a whole number of 0 or more"),
    (lambda s: s.__setitem__("epoch", -1), "has epoch -1, not a whole number of 0 or more"),
], ids=["no-identity", "identity-not-json", "identity-a-list", "history-not-json", "history-not-rows", "no-task",
        "task-a-tensor", "step-a-string", "step-a-float", "index-a-tensor", "epoch-negative"])
def test_an_intact_checkpoint_laid_out_wrongly_is_one_line(ckpt, edit, problem):
    rewrite(ckpt.path, edit, reseal=True)
    with pytest.raises(CacheError, match=f"^checkpoint {ckpt.path} {problem}" + START_OVER) as error:
        train(Task(), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))
    one_line(error)


@pytest.mark.parametrize("what", ["not-a-dict", "format-1"])
def test_other_files_and_older_checkpoints_are_another_version(ckpt, what):
    if what == "not-a-dict":
        torch.save(torch.zeros(3), ckpt.path)
    else:  # a checkpoint as zeroshift wrote it before digests: no digest, format 1
        rewrite(ckpt.path, lambda s: (s.pop("digest"), s.__setitem__("format", FORMAT - 1)), reseal=False)
    with pytest.raises(CacheError, match="is not a zeroshift checkpoint of this version" + START_OVER) as error:
        Checkpoints(ckpt.folder, ID).load()
    one_line(error)


def test_a_task_state_of_another_model_is_one_line(ckpt):
    with pytest.raises(CacheMismatch, match=r"does not fit this run's model \(its task state holds net.0.weight as a "
                       r"float32 tensor of shape \[16, 4\], this run's model has a float32 tensor of shape \[8, 4\]\)"
                       + START_OVER) as error:
        train(Task(wide=8), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))
    one_line(error)
    rewrite(ckpt.path, lambda s: s["task"].pop("net.1.running_mean"), reseal=True)
    with pytest.raises(CacheMismatch, match=r"its task state has no net.1.running_mean\)" + START_OVER):
        train(Task(), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))
    rewrite(ckpt.path, lambda s: s["task"].update({"net.1.running_mean": torch.zeros(16), "extra": torch.zeros(1)}),
            reseal=True)
    with pytest.raises(CacheMismatch, match=r"its task state holds extra, which this run's model has not\)"):
        train(Task(), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))


def test_optimizer_and_rng_states_that_do_not_fit_are_one_line(ckpt):
    saved = ckpt.path.read_bytes()
    rewrite(ckpt.path, lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(4, 16)), reseal=True)
    with pytest.raises(CacheMismatch, match=r"does not fit this run's optimizer \(its exp_avg of shape \[4, 16\] is "
                       r"for a parameter of shape \[16, 4\]\)" + START_OVER) as error:
        train(Task(), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))
    one_line(error)
    ckpt.path.write_bytes(saved)
    rewrite(ckpt.path, lambda s: s["rng"].update(torch=torch.zeros(7, dtype=torch.uint8)), reseal=True)
    with pytest.raises(CacheError, match=r"has an unusable RNG state \(RuntimeError\)" + START_OVER):
        train(Task(), batches, CFG, progress=False, checkpoints=Checkpoints(ckpt.folder, ID))


def test_the_command_line_refuses_a_damaged_checkpoint_in_one_line(home, tmp_path, capsys):
    folder = colour_folder(tmp_path / "imgs", 4, 32, noise=25)  # the student's size: no upscaling warning

    def distill(out: Path, *extra: str) -> int:
        return main(["distill", "--teacher", "tiny-clip:seed=0", "--data", f"folder:{folder}", "--student",
                     "student-cnn:width=8,size=32", "--epochs", "1", "--batch-size", "4", "--out", str(out),
                     "--runtime", "torch", "--device", "cpu", *extra])

    assert distill(tmp_path / "first", "--keep-checkpoints") == 0
    shutil.copytree(tmp_path / "first.ckpt", tmp_path / "damaged.ckpt")  # the same run's checkpoint, for another --out
    flip_byte_in_largest_tensor(tmp_path / "damaged.ckpt" / "last.pt")
    capsys.readouterr()
    assert distill(tmp_path / "damaged") == 2
    err = capsys.readouterr().err.strip()
    ckpt = tmp_path / "damaged.ckpt"
    assert err == (f"error: checkpoint {ckpt / 'last.pt'} is damaged (its contents do not match the digest written "
                   f"with them); delete {ckpt} or pass --no-resume to start over")
    assert not (tmp_path / "damaged").exists()
    assert distill(tmp_path / "damaged", "--no-resume") == 0  # the way out the message names
    assert json.loads((tmp_path / "damaged" / "config.json").read_text())["resumed_from_step"] is None
