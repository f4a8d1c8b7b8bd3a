"""Under torchrun (gloo, CPU) the shared loop averages gradients over ranks: two ranks on half batches
end with the weights of one process on the whole batches, and checkpoint once."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from helpers import torchrun
from torch import nn

from zeroshift.train import Checkpoints, TrainConfig, train

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed
    from torch import nn
    from zeroshift import distributed as dist
    from zeroshift.train import Checkpoints, TrainConfig, train

    class Task(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(dist.rank())  # different on each rank: DDP must broadcast rank 0's weights
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        def step(self, batch):
            x, y = batch
            return {"mse": ((self.net(x) - y) ** 2).mean()}, {}

    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        full = [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(5)]
        r = dist.rank()
        return [(x[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4]) for x, y in full]  # this rank's half

    task = Task()
    ckpt = Checkpoints(sys.argv[1] + "/ckpt", {"run": "ddp"}, every=2)
    history = train(task, batches, TrainConfig(epochs=2, lr=0.1, optimizer="sgd", momentum=0.0, device="cpu"),
                    progress=False, checkpoints=ckpt)
    with open(f"{sys.argv[1]}/rank{dist.rank()}.json", "w") as f:
        json.dump({k: v.tolist() for k, v in task.state_dict().items()}, f)
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.usefixtures("single_process")
def test_two_ranks_average_gradients(tmp_path):
    script = tmp_path / "train_dist.py"
    script.write_text(SCRIPT)
    done = torchrun(script, tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert Checkpoints(tmp_path / "ckpt", {"run": "ddp"}).load()["step"] == 10

    class Task(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

        def step(self, batch):
            x, y = batch
            return {"mse": ((self.net(x) - y) ** 2).mean()}, {}

    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        return [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(5)]

    single = Task()
    train(single, batches, TrainConfig(epochs=2, lr=0.1, optimizer="sgd", momentum=0.0, device="cpu"), progress=False)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(torch.tensor(ranks[0][k]), v, atol=1e-6, rtol=1e-5)
