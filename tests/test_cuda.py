"""The CUDA paths: extraction, mixed-precision training of each method, Sinkhorn on the GPU and the
gloo+nccl process group. Skipped on machines without a GPU (CI); run on one with
`pytest tests/test_cuda.py`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import colour_folder

import zeroshift
from zeroshift.methods.align import AlignConfig, align
from zeroshift.methods.distill import DistillConfig, distill
from zeroshift.methods.sinkhorn import ot_soft_labels
from zeroshift.methods.transfer import TransferConfig, fit, transfer

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("home")]


def _data(root):
    return colour_folder(root, 16, 24, captions=("small", "big"))


def test_embed_on_the_gpu_matches_the_cpu(tmp_path):
    data = _data(tmp_path / "data")
    gpu = zeroshift.embed("tiny-clip:seed=0", f"folder:{data}", tmp_path / "gpu", runtime="torch", device="cuda",
                          progress=False)
    cpu = zeroshift.embed("tiny-clip:seed=0", f"folder:{data}", tmp_path / "cpu", runtime="torch", device="cpu",
                          progress=False)
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_distill_trains_in_each_precision(tmp_path, precision):
    data = _data(tmp_path / "data")
    out = tmp_path / precision
    distill(DistillConfig(teacher="tiny-clip:seed=0", data=(f"folder:{data}",), out=str(out),
                          student="student-vit:dim=32,depth=1,heads=2,patch=8,size=16", epochs=3, batch_size=16,
                          views=1, holdout=0.0, runtime="torch", device="cuda", precision=precision), progress=False)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == precision


@pytest.mark.parametrize("mode", ["locked", "finetune"])
def test_align_trains_on_the_gpu_in_bf16(tmp_path, mode):
    data = _data(tmp_path / "data")
    out = tmp_path / mode
    vlm = align(AlignConfig(image="tiny-clip:seed=0", text="tiny-clip:seed=1", data=(f"csv:{data}/pairs.csv",),
                            out=str(out), dim=16, epochs=2, batch_size=16, loss="ot", mode=mode, runtime="torch",
                            device="cuda", precision="bf16"), progress=False)
    z = vlm.encode_text(["a red thing", "a blue thing"])
    assert torch.isfinite(z).all()


def test_transfer_fits_on_the_gpu(tmp_path):
    data = _data(tmp_path / "data")
    (tmp_path / "prompts.txt").write_text("a red thing\na green thing\na blue thing\n")
    transfer(TransferConfig(teacher="tiny-clip:seed=0", encoder="tiny-clip:seed=1", data=f"folder:{data}",
                            prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / "bridge"), batch_size=16,
                            runtime="torch"), progress=False)
    config = json.loads((tmp_path / "bridge" / "config.json").read_text())
    assert config["kind"] == "bridge"
    src, tch = (zeroshift.embed(f"tiny-clip:seed={k}", f"folder:{data}", runtime="torch", progress=False) for k in (1, 0))
    bridge = fit(TransferConfig(teacher="t", encoder="s", data="d", out="-", method="ttc", holdout=0.0), src, tch,
                 progress=False).bridge  # trained on the GPU, handed back on the CPU
    assert next(bridge.parameters()).device.type == "cpu" and bridge(torch.zeros(2, src.dim)).shape == (2, tch.dim)


def test_sinkhorn_on_the_gpu_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    zi, zt = (torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1) for _ in range(2))
    torch.testing.assert_close(ot_soft_labels(zi.cuda(), zt.cuda()).cpu(), ot_soft_labels(zi, zt), atol=1e-5, rtol=1e-4)


def test_the_gloo_and_nccl_group_serves_cpu_and_gpu_tensors(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("cpu:gloo,cuda:nccl", store=store, rank=0, world_size=1)
    try:
        x, y = torch.ones(4, device="cuda"), torch.ones(4)
        dist.all_reduce(x)
        dist.all_reduce(y)
        parts = [torch.empty(4, device="cuda")]
        dist.all_gather(parts, x)
        assert x.sum().item() == 4 and y.sum().item() == 4 and parts[0].is_cuda
    finally:
        dist.destroy_process_group()
