"""transfer, distill and align under torchrun (2 gloo ranks on CPU): the run rank 0 writes equals the
run one process writes at the same global batch, weight for weight; a rank that dies, or cannot read
its cache, fails the job fast with a clear message."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from helpers import colour_folder, torchrun
from PIL import Image
from safetensors.torch import load_file

import zeroshift
from zeroshift.methods.align import AlignConfig, align
from zeroshift.methods.distill import DistillConfig, distill
from zeroshift.methods.transfer import TransferConfig, transfer

SCRIPT = textwrap.dedent(
    """
    import sys, torch.distributed
    from zeroshift.methods.align import AlignConfig, align
    from zeroshift.methods.distill import DistillConfig, distill
    from zeroshift.methods.transfer import TransferConfig, transfer
    data, out = sys.argv[1], sys.argv[2]
    for name, unpaired in (("bridge", None), ("unpaired", f"csv:{data}/pairs.csv")):
        transfer(TransferConfig(teacher="tiny-clip:seed=0", encoder="tiny-clip:seed=1", data=f"folder:{data}",
                                unpaired_data=unpaired, prompts=f"{data}/prompts.txt", epochs=2, batch_size=8,
                                out=f"{out}/{name}", runtime="torch"), progress=False)
    align(AlignConfig(image="tiny-clip:seed=0", text="tiny-clip:seed=1", data=(f"csv:{data}/pairs.csv",),
                      out=f"{out}/aligned", dim=16, epochs=2, batch_size=8, loss="ot", runtime="torch",
                      device="cpu"), progress=False)
    distill(DistillConfig(teacher="tiny-clip:seed=0", data=(f"folder:{data}",), out=f"{out}/student",
                          student="student-vit:dim=32,depth=1,heads=2,patch=8,size=16", epochs=2, batch_size=8,
                          views=1, holdout=0.0, runtime="torch", device="cpu", precision="fp32"), progress=False)
    torch.distributed.destroy_process_group()
    """
)


def _data(root):
    colour_folder(root, 8, 20, captions=("small", "big"))  # 24 rows: whole global batches of 8
    (root / "prompts.txt").write_text("".join(f"a photo of a {c} thing.\n" for c in ("red", "green", "blue", "grey")))
    return root


@pytest.mark.usefixtures("home", "single_process")
def test_two_ranks_write_the_run_one_process_writes(tmp_path):
    data = _data(tmp_path / "data")
    script = tmp_path / "methods_dist.py"
    script.write_text(SCRIPT)
    done = torchrun(script, data, tmp_path / "dist", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["aligned", "bridge", "student", "unpaired"]

    for name, unpaired in (("bridge", None), ("unpaired", f"csv:{data}/pairs.csv")):
        transfer(TransferConfig(teacher="tiny-clip:seed=0", encoder="tiny-clip:seed=1", data=f"folder:{data}",
                                unpaired_data=unpaired, prompts=f"{data}/prompts.txt", epochs=2, batch_size=8,
                                out=str(tmp_path / "one" / name), runtime="torch"), progress=False)
        a, b = (load_file(str(tmp_path / d / name / "model.safetensors")) for d in ("dist", "one"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")

    align(AlignConfig(image="tiny-clip:seed=0", text="tiny-clip:seed=1", data=(f"csv:{data}/pairs.csv",),
                      out=str(tmp_path / "one" / "aligned"), dim=16, epochs=2, batch_size=8, loss="ot",
                      runtime="torch", device="cpu"), progress=False)
    distill(DistillConfig(teacher="tiny-clip:seed=0", data=(f"folder:{data}",), out=str(tmp_path / "one" / "student"),
                          student="student-vit:dim=32,depth=1,heads=2,patch=8,size=16", epochs=2, batch_size=8,
                          views=1, holdout=0.0, runtime="torch", device="cpu", precision="fp32"), progress=False)
    a = load_file(str(tmp_path / "dist" / "aligned" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "aligned" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=f"aligned: {k}")
    # The student is compared by what it computes: attention's key bias gets a gradient of ~0 that AdamW
    # normalises into noise-sized steps, so that one weight differs while the embeddings agree.
    dist_vlm, one_vlm = (zeroshift.load(f"run:{tmp_path / d / 'student'}") for d in ("dist", "one"))
    images = torch.stack([one_vlm.image_transform(Image.open(data / "red" / f"{i}.png").convert("RGB")) for i in range(4)])
    torch.testing.assert_close(dist_vlm.encode_image(images), one_vlm.encode_image(images), atol=1e-4, rtol=1e-4)


@pytest.mark.usefixtures("single_process")
@pytest.mark.parametrize("world", [2])
def test_a_rank_that_dies_fails_the_run_fast(tmp_path, world):
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(
        """
        import os, sys, time, torch
        from torch import nn
        from zeroshift import distributed as dist
        from zeroshift.train import TrainConfig, train

        class Task(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Linear(4, 2)
            def step(self, batch):
                if dist.rank() == 1 and batch[0] == 3:
                    os._exit(3)  # killed mid-epoch
                return {"mse": self.net(torch.ones(2, 4)).pow(2).mean()}, {}

        train(Task(), lambda e: [(i,) for i in range(50)], TrainConfig(epochs=1, device="cpu"), progress=False)
        """))
    done = torchrun(script, nproc=world, timeout=120)
    assert done.returncode != 0 and "exitcode" in done.stderr and "3" in done.stderr


@pytest.mark.usefixtures("single_process")
def test_a_rank_that_cannot_read_its_cache_fails_fast_and_clearly(tmp_path):
    from zeroshift.cache import write_features

    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    for side in ("source", "teacher"):
        write_features(tmp_path / side, [x], rows=64, dim=8, model=side, data="d", shard_rows=16)
    script = tmp_path / "partial.py"
    script.write_text(textwrap.dedent(
        """
        import shutil, sys
        from pathlib import Path
        from zeroshift import distributed as dist
        from zeroshift.cache import load_features
        from zeroshift.errors import ZeroshiftError
        from zeroshift.methods.transfer import TransferConfig, fit
        root = Path(sys.argv[1])
        if dist.rank() == 1:  # this machine's copy of the teacher cache lacks a shard
            shutil.copytree(root / "teacher", root / "copy")
            (root / "copy" / "shard-00003.npy").unlink()
        src, tch = load_features(root / "source"), load_features(root / ("copy" if dist.rank() == 1 else "teacher"),
                                                                 verify=False)
        cfg = TransferConfig(teacher="t", encoder="s", data="d", out="-", method="lstsq", holdout=0.0)
        try:
            fit(cfg, src, tch, progress=False)
        except ZeroshiftError as e:
            sys.exit(f"zeroshift: error: {e}")
        """))
    done = torchrun(script, tmp_path, timeout=120, env={"ZEROSHIFT_DIST_TIMEOUT": "60"})
    assert done.returncode != 0
    assert "zeroshift: error: rank 1 cannot read" in done.stderr and "shard-00003.npy" in done.stderr, done.stderr[-2000:]
