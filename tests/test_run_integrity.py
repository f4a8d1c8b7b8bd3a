"""Run folders are checked against what wrote them: weights and config digests, finite weights.
Each damaged copy is made here, from tiny lstsq bridges (tiny-clip teacher and encoder) and aligned runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import colour_folder, one_line
from safetensors.torch import load_file, save_file

from zeroshift import runfolder
from zeroshift.errors import CacheError
from zeroshift.methods.align import AlignConfig, align
from zeroshift.methods.transfer import TransferConfig, transfer
from zeroshift.runs import load_run

TEACHER, ENCODER = "tiny-clip:seed=0", "tiny-clip:seed=1,dim=24"
TEXTS = ["a red thing", "a blue thing"]
pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return colour_folder(tmp_path / "data", 4, 16, captions=("small", "big"))


def bridge(out: Path, data: Path, teacher: str = TEACHER, **kw) -> Path:
    """A closed-form bridge run at `out` (a second or so)."""
    transfer(TransferConfig(**{"teacher": teacher, "encoder": ENCODER, "data": f"folder:{data}", "out": str(out),
                               "method": "lstsq", "runtime": "torch", **kw}), progress=False)
    return out


def aligned(out: Path, data: Path) -> Path:
    align(AlignConfig(image=TEACHER, text="tiny-clip:seed=1", pairs=(f"csv:{data / 'pairs.csv'}",), out=str(out),
                      dim=16, epochs=1, batch_size=6, runtime="torch", device="cpu"), progress=False)
    return out


def reseal(folder: Path, **changes) -> dict:
    """Edit config.json by hand and record the digests of the edit, as a folder put together on purpose
    would be (so that only the check under test can refuse it); a change of None drops the key."""
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key) if value is None else config.__setitem__(key, value)
    config["integrity"] = {"weights_sha256": runfolder.weights_digest(folder),
                           "config_sha256": runfolder.config_digest(config)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return config


# ---------------------------------------------------------------- issue 17, item 2: the run's own files
@pytest.mark.parametrize("make", [bridge, aligned])
def test_a_byte_flip_in_the_weights_is_refused(tmp_path, data, make):
    out = make(tmp_path / "run", data)
    config = json.loads((out / "config.json").read_text())
    recorded = config["integrity"]["weights_sha256"]
    assert load_run(str(out)).spec == f"run:{out}@{recorded[:12]}"  # the spec carries the recorded digest
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-3] ^= 0x01  # one low bit of the last weight: still a valid file of finite numbers
    (out / "model.safetensors").write_bytes(bytes(raw))
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())
    with pytest.raises(CacheError) as e:
        load_run(str(out))
    assert f"run folder {out}: model.safetensors does not match the digest recorded" in one_line(e)
    assert "retrain or restore" in str(e.value)


def test_nan_weights_in_a_valid_file_are_refused_naming_the_tensor(tmp_path, data):
    out = bridge(tmp_path / "run", data)
    state = load_file(str(out / "model.safetensors"))
    state["bridge.h.bias"] = torch.full_like(state["bridge.h.bias"], float("nan"))
    save_file(state, str(out / "model.safetensors"))
    reseal(out)  # digests that agree with the NaN file
    with pytest.raises(CacheError) as e:
        load_run(str(out))
    assert "'bridge.h.bias' holds NaN or inf" in one_line(e)
    reseal(out, integrity=None)  # a run written before digests were recorded is still read, and checked
    with pytest.raises(CacheError, match="'bridge.h.bias' holds NaN"):
        load_run(str(out))


def test_a_run_written_before_digests_were_recorded_still_loads(tmp_path, data):
    out = bridge(tmp_path / "run", data)
    want = load_run(str(out)).encode_text(TEXTS)
    config = json.loads((out / "config.json").read_text())
    del config["integrity"]
    config.pop("depends", None)
    (out / "config.json").write_text(json.dumps(config))
    old = load_run(str(out))
    assert old.spec == f"run:{out}@{runfolder.weights_digest(out)[:12]}"
    torch.testing.assert_close(old.encode_text(TEXTS), want)


def test_a_hand_edit_swapping_the_encoder_for_one_of_the_same_width_is_refused(tmp_path, data):
    out = bridge(tmp_path / "run", data)
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"] == ENCODER
    config["encoder"] = "tiny-clip:seed=2,dim=24"  # same width: every dim check passes
    (out / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(CacheError) as e:
        load_run(str(out))
    assert f"run folder {out}: config.json was edited after the run was written" in one_line(e)
