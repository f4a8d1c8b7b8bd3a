"""methods/losses.py: the contrastive losses see the global batch under torchrun, so two ranks on half
batches give the gradients of one process on the whole batch (distill's contrastive losses did not)."""
from __future__ import annotations

import json
import os
import textwrap

import torch
from helpers import torchrun

from zeroshift.methods.losses import AlignLoss, ContrastiveFeatureLoss, ContrastiveTextLoss, contrastive

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed
    from zeroshift import distributed as dist
    from test_losses import batch_grads
    dist.init()
    r, w = dist.rank(), dist.world_size()
    grads = batch_grads(lambda x: x[r * 4:(r + 1) * 4])
    for g in grads.values():  # what DDP does to parameter gradients: the mean over ranks
        torch.distributed.all_reduce(g)
        g /= w
    with open(f"{sys.argv[1]}/rank{r}.json", "w") as f:
        json.dump({k: v.tolist() for k, v in grads.items()}, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    """
)


def batch_grads(rows) -> dict[str, torch.Tensor]:
    """Gradients of each loss with respect to a shared weight, on the rows `rows` selects of a fixed batch of 8."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    texts, ids = torch.randn(5, 6, generator=g), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    losses = {"feature": lambda s, b: ContrastiveFeatureLoss(0.1)(s, b)["contrastive-feature"],
              "text": lambda s, b: ContrastiveTextLoss(texts, 0.1)(s, b)["contrastive-text"],
              "align-ls": lambda s, b: AlignLoss("ls", 0.7, 0.15, 5, 0.01)(
                  torch.nn.functional.normalize(s, dim=-1), torch.nn.functional.normalize(b["target"], dim=-1),
                  torch.tensor(10.0))["ls"]}
    out = {}
    for name, loss in losses.items():
        weight = torch.eye(6).requires_grad_()
        loss(rows(x) @ weight, {"target": rows(t), "text": rows(ids)}).backward()
        out[name] = weight.grad
    return out


def test_two_ranks_see_the_global_batch(tmp_path):
    script = tmp_path / "losses_dist.py"
    script.write_text(SCRIPT)
    done = torchrun(script, tmp_path, env={"PYTHONPATH": os.pathsep.join([os.path.dirname(__file__),
                                                                            os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = batch_grads(lambda x: x)
    for name, grad in single.items():
        for rank in ranks:
            assert torch.allclose(torch.tensor(rank[name]), grad, atol=1e-5), name


def test_contrastive_in_one_process_is_infonce():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    logits = 10 * a @ b.T
    want = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(5))
                  + torch.nn.functional.cross_entropy(logits.T, torch.arange(5)))
    assert torch.allclose(contrastive(a, b, 10.0), want)
    eye = torch.eye(5)
    assert torch.allclose(contrastive(a, b, 10.0, lambda n: (eye, eye)), want)
