"""runfolder.py and runs.py: run folders written atomically, refused when taken, loaded back as `run:` VLMs."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import one_line
from torch import nn

from zeroshift import load
from zeroshift.errors import CacheError, CacheMismatch, MissingWeights, ZeroshiftError
from zeroshift import runfolder as artefact
from zeroshift.runfolder import RunWriter, read_run
from zeroshift.runs import load_run
from zeroshift.models.transforms import probe_batch
from zeroshift.models.vlm import TowersVLM

ENCODER, TEACHER = "tiny-clip:seed=0,dim=32", "tiny-clip:seed=1,dim=16"


def build_toy(folder, config, state, runtime):
    """A test-only kind: tiny-clip's image tower, a linear head built from the weights, another tiny text tower."""
    image, text = load(config["encoder"]).image, load(config["teacher"]).text
    out_dim, in_dim = state["head.weight"].shape
    head = nn.Linear(in_dim, out_dim)
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
    return TowersVLM(image, text, spec=config["spec"], image_head=head, dim=out_dim)


@pytest.fixture(autouse=True)
def toy_kind(home, add_run_kind):
    add_run_kind("toy", build_toy)


def toy_state(seed: int = 0, dims: tuple[int, int] = (16, 32)) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    head = nn.Linear(dims[1], dims[0])
    return {f"head.{k}": v for k, v in head.state_dict().items()}


def toy_config(**extra) -> dict:
    return {"kind": "toy", "encoder": ENCODER, "teacher": TEACHER, "dims": {"encoder": 32, "teacher": 16}, **extra}


def write_run(out, seed: int = 0, overwrite: bool = False, config: dict | None = None, state=None):
    with RunWriter(out, overwrite, {"kind": "toy", "teacher": TEACHER}) as run:
        (run.path / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
        run.finish(config or toy_config(), state if state is not None else toy_state(seed), "# toy run\n")
    return out


def test_writer_stages_and_publishes_at_finish(tmp_path):
    out = tmp_path / "runs" / "toy"
    with RunWriter(out, False, {"kind": "toy"}) as run:
        assert run.path == out.with_name(f"toy.partial-{os.getpid()}") and run.path.is_dir()
        (run.path / "metrics.jsonl").write_text("{}\n")
        assert not out.exists()  # nothing at OUT before finish
        run.finish(toy_config(), toy_state(), "# card")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "metrics.jsonl", "model.safetensors"]
    assert artefact.leftovers(out) == []
    config, state = read_run(out)
    assert config["kind"] == "toy" and config["zeroshift_version"] and config["tensors"] == {
        "head.weight": [16, 32], "head.bias": [16]}
    assert torch.equal(state["head.weight"], toy_state()["head.weight"])
    assert (out / "README.md").read_text().endswith("---\n\n# card\n")  # after the hub front matter


def test_existing_run_is_refused_unless_overwrite(tmp_path):
    out = write_run(tmp_path / "toy", seed=0)
    with pytest.raises(ZeroshiftError) as e:
        RunWriter(out, False, {"kind": "toy", "teacher": TEACHER})
    assert "--overwrite" in one_line(e) and f"teacher={TEACHER}" in str(e.value)
    write_run(out, seed=1, overwrite=True)
    assert torch.equal(read_run(out)[1]["head.weight"], toy_state(1)["head.weight"])
    assert artefact.leftovers(out) == []


def test_folders_that_are_not_runs_are_never_replaced(tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"...")
    with pytest.raises(ZeroshiftError, match="never overwritten"):
        RunWriter(precious, True)
    assert (precious / "cat.jpg").read_bytes() == b"..."
    (tmp_path / "file").write_text("x")
    with pytest.raises(ZeroshiftError, match="is a file"):
        RunWriter(tmp_path / "file", True)
    (tmp_path / "empty").mkdir()
    assert read_run(write_run(tmp_path / "empty"))[0]["kind"] == "toy"  # an empty folder is fine


def test_exception_removes_staging(tmp_path):
    out = tmp_path / "toy"
    with pytest.raises(RuntimeError, match="diverged"), RunWriter(out) as run:
        (run.path / "metrics.jsonl").write_text("{}\n")
        raise RuntimeError("diverged")
    assert not out.exists() and artefact.leftovers(out) == []
    with pytest.raises(ZeroshiftError, match="NaN"):
        write_run(out, state={"head.weight": torch.full((16, 32), float("nan")), "head.bias": torch.zeros(16)})
    assert not out.exists() and artefact.leftovers(out) == []


def test_killed_run_leaves_only_staging_and_the_next_run_cleans_it(tmp_path):
    out = tmp_path / "toy"
    code = textwrap.dedent(f"""
        import os, signal
        from zeroshift.runfolder import RunWriter
        with RunWriter({str(out)!r}) as run:
            (run.path / "metrics.jsonl").write_text("{{}}\\n")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-500:]
    assert not out.exists()
    assert [p.name for p in artefact.leftovers(out)] == [f"toy.partial-{proc.pid}"]
    with pytest.raises(MissingWeights):
        load_run(str(out))
    alive = out.with_name(f"toy.partial-{os.getppid()}")  # another live process's run: left alone
    alive.mkdir()
    write_run(out)
    assert [p.name for p in artefact.leftovers(out)] == [alive.name]
    assert read_run(out)[0]["kind"] == "toy"


def test_load_run_spec_is_absolute_path_and_weights_digest(tmp_path, monkeypatch):
    out = write_run(tmp_path / "toy", seed=0)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:12]
    monkeypatch.chdir(tmp_path)
    vlm = load_run("toy")
    assert vlm.spec == f"run:{out}@{digest}" and vlm.dim == 16 and not vlm.training
    x = probe_batch(vlm.image_transform, 3)
    head = nn.Linear(32, 16)
    head.load_state_dict({k.removeprefix("head."): v for k, v in toy_state(0).items()})
    with torch.inference_mode():
        want = head(load(ENCODER).encode_image(x))  # [3, 16]
    assert torch.allclose(vlm.encode_image(x), want, atol=1e-6)
    assert load_run(f"toy@{digest}").spec == vlm.spec
    write_run(out, seed=1, overwrite=True)  # retrained: another digest, and the old one is refused
    assert load_run(str(out)).spec != vlm.spec
    with pytest.raises(CacheMismatch) as e:
        load_run(f"{out}@{digest}")
    assert "retrained" in one_line(e)


def test_load_run_refuses_missing_and_damaged_runs(tmp_path):
    with pytest.raises(MissingWeights):
        load_run(str(tmp_path / "nothing"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(CacheError, match="no config.json"):
        load_run(str(tmp_path / "bare"))
    out = write_run(tmp_path / "toy")
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CacheError) as e:
        load_run(str(out))
    assert "damaged" in one_line(e)
    (out / "model.safetensors").unlink()
    with pytest.raises(CacheError, match="no model.safetensors"):
        load_run(str(out))
    other = write_run(tmp_path / "other", config=toy_config(kind="hologram"))
    with pytest.raises(ZeroshiftError, match="kind 'hologram'"):
        load_run(str(other))
    with pytest.raises(CacheError, match="unfinished"):
        load_run(str(tmp_path / f"toy.partial-{os.getpid()}"))


def test_load_run_checks_dims_against_weights_and_towers(tmp_path):
    small = write_run(tmp_path / "small", state=toy_state(0, dims=(16, 24)),
                      config=toy_config(encoder="tiny-clip:seed=0,dim=24", dims={"encoder": 24, "teacher": 16}))
    big = write_run(tmp_path / "big")
    (big / "model.safetensors").write_bytes((small / "model.safetensors").read_bytes())  # mixed-up files
    with pytest.raises(CacheMismatch) as e:
        load_run(str(big))
    assert "mixes files" in one_line(e)
    config = json.loads((small / "config.json").read_text())
    del config["tensors"]
    config["dims"]["encoder"] = 99  # a recorded dim no weight has
    (small / "config.json").write_text(json.dumps(config))
    with pytest.raises(CacheMismatch, match="encoder dim 99"):
        load_run(str(small))
    moved = write_run(tmp_path / "moved", state=toy_state(0, dims=(16, 24)),
                      config=toy_config(encoder="tiny-clip:seed=0,dim=32", dims={"encoder": 24, "teacher": 16}))
    with pytest.raises(CacheMismatch) as e:  # the encoder spec now gives 32-d features, the run was fit on 24
        load_run(str(moved))
    assert "24-d image tower" in one_line(e)


def test_loaded_run_carries_its_folder_and_config(tmp_path):
    out = write_run(tmp_path / "toy")
    vlm = load_run(str(out))
    assert vlm.run_folder == out.resolve() and vlm.run_config == read_run(out)[0]
    assert artefact.read_config(out) == vlm.run_config
