"""Run folders are checked against what wrote them: weights and config digests, finite weights, the runs
a run is built on (pinned by absolute path and digest), cycles, and relative paths read against the folder.
Each damaged copy is made here, from tiny lstsq bridges (tiny-clip teacher and encoder) and aligned runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import colour_folder, one_line
from safetensors.torch import load_file, save_file

from zeroshift import runfolder
from zeroshift.errors import CacheError, CacheMismatch, MissingWeights, ZeroshiftError
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
    align(AlignConfig(image=TEACHER, text="tiny-clip:seed=1", data=(f"csv:{data / 'pairs.csv'}",), out=str(out),
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


# ---------------------------------------------------------------- issue 17, item 7: cycles and relative paths
def test_a_run_naming_itself_as_its_teacher_is_a_cycle(tmp_path, data):
    out = bridge(tmp_path / "run", data)
    reseal(out, teacher=f"run:{out}")
    with pytest.raises(CacheError) as e:
        load_run(str(out))
    assert f"in a cycle: {out} -> {out}" in one_line(e) and len(str(e.value)) < 400


def test_two_runs_naming_each_other_are_a_cycle(tmp_path, data):
    first = bridge(tmp_path / "first", data)
    chain = bridge(tmp_path / "chain", data, teacher=f"run:{first}")
    reseal(first, teacher=f"run:{chain}")  # same weights, so chain's pin of first still holds
    with pytest.raises(CacheError) as e:
        load_run(str(chain))
    assert f"in a cycle: {chain} -> {first} -> {chain}" in one_line(e)


def test_a_relative_spec_in_config_is_read_against_the_run_folder(tmp_path, data, monkeypatch):
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    teacher = bridge(runs / "teacher", data)
    decoy = bridge(tmp_path / "teacher", data, teacher="tiny-clip:seed=3")  # ../teacher seen from elsewhere/
    chain = bridge(runs / "chain", data, teacher=f"run:{teacher}")
    card = (chain / "README.md").read_text()
    assert "relative path there is read relative to this folder" in card and str(teacher) in card
    reseal(chain, teacher="run:../teacher", depends={})  # a folder put together by hand, paths relative
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    got = load_run(str(chain)).encode_text(TEXTS)
    torch.testing.assert_close(got, load_run(str(teacher)).encode_text(TEXTS))
    assert not torch.allclose(got, load_run(str(decoy)).encode_text(TEXTS))
    shutil.rmtree(teacher)
    with pytest.raises(MissingWeights) as e:
        load_run(str(chain))
    assert f"teacher run folder {teacher}, which is missing (a relative path" in one_line(e)


@pytest.mark.parametrize("spec, want", [
    ("run:../teacher@abcdef12", "run:/r/teacher@abcdef12"),
    ("onnx:enc.onnx#out?norm=clip", "onnx:/r/run/enc.onnx#out?norm=clip"), ("onnx:/abs/e.onnx", "onnx:/abs/e.onnx"),
    ("timm:resnet18@w.pth#logits", "timm:resnet18@/r/run/w.pth#logits"), ("timm:resnet18@random", "timm:resnet18@random"),
    ("openclip:ViT-B-32@w.safetensors", "openclip:ViT-B-32@/r/run/w.safetensors"),
    ("openclip:ViT-B-32@laion2b_s34b_b79k", "openclip:ViT-B-32@laion2b_s34b_b79k"),  # a pretrained tag
    ("hf-clip:openai/clip-vit-base-patch32", "hf-clip:openai/clip-vit-base-patch32"),  # a hub id
    ("conse:effnet-lite2+st:./minilm", "conse:effnet-lite2+st:/r/run/minilm")])
def test_relative_file_paths_in_specs_are_rebased_and_names_are_not(spec, want):
    from zeroshift.runspecs import rebase

    assert rebase(spec, Path("/r/run")) == want


# ---------------------------------------------------------------- issue 16, item 2: chains are portable and pinned
def test_a_chained_run_records_its_teacher_absolutely_and_loads_from_anywhere(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = bridge(Path("runs/teacher"), data)
    chain = bridge(Path("runs/chain"), data, teacher="run:runs/teacher")
    config = json.loads((chain / "config.json").read_text())
    digest = json.loads((teacher / "config.json").read_text())["integrity"]["weights_sha256"]
    where = tmp_path / "runs" / "teacher"
    assert config["teacher"] == f"run:{where}@{digest[:12]}"
    assert config["depends"] == {"teacher": {"path": str(where), "weights_sha256": digest}}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    vlm = load_run(str(tmp_path / "runs" / "chain"))
    torch.testing.assert_close(vlm.encode_text(TEXTS), load_run(str(where)).encode_text(TEXTS))


def test_a_retrained_teacher_is_refused_naming_it(tmp_path, data):
    teacher = bridge(tmp_path / "teacher", data)
    chain = bridge(tmp_path / "chain", data, teacher=f"run:{teacher}")
    bridge(teacher, data, data_fraction=0.5, overwrite=True)  # retrained: other weights
    with pytest.raises(CacheMismatch) as e:
        load_run(str(chain))
    assert f"built on the teacher run folder {teacher} @" in one_line(e) and "changed since" in str(e.value)


def test_a_missing_teacher_is_refused_naming_it(tmp_path, data):
    teacher = bridge(tmp_path / "teacher", data)
    chain = bridge(tmp_path / "chain", data, teacher=f"run:{teacher}")
    shutil.rmtree(teacher)
    with pytest.raises(MissingWeights) as e:
        load_run(str(chain))
    assert f"built on the teacher run folder {teacher}, which is missing; restore it" in one_line(e)


def test_a_run_cannot_be_built_on_the_run_it_replaces(tmp_path, data):
    out = bridge(tmp_path / "run", data)
    with pytest.raises(ZeroshiftError) as e:
        bridge(out, data, teacher=f"run:{out}", overwrite=True)
    assert "cannot be built on the run it replaces" in one_line(e)
    load_run(str(out))  # left as it was
