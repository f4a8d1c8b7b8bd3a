"""Sinkhorn plans against POT, and OTTER's soft labels (single process and over a 2-rank gloo group)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port

from zeroshift.errors import ZeroshiftError
from zeroshift.distributed import gather_rows
from zeroshift.methods.sinkhorn import ot_soft_label_pair, ot_soft_labels, sinkhorn


def _pot():
    """POT is a test-only dependency, imported where used (it is slow to import in the spawned ranks)."""
    return pytest.importorskip("ot")


def _problem(n: int, m: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=g, dtype=dtype)  # [N, M]
    a = torch.rand(n, generator=g, dtype=dtype) + 0.1  # [N]
    b = torch.rand(m, generator=g, dtype=dtype) + 0.1  # [M]
    return cost, a / a.sum(), b / b.sum()


def _pot_plan(cost, a, b, lam, iters, log_domain):
    ot = _pot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": stopThr=0 runs every iteration on purpose
        if log_domain:
            plan = ot.bregman.sinkhorn_log(a.numpy(), b.numpy(), cost.numpy(), lam, numItermax=iters, stopThr=0)
        else:
            plan = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), lam, method="sinkhorn", numItermax=iters, stopThr=0)
    return torch.from_numpy(plan)


@pytest.mark.parametrize("log_domain", [True, False])
@pytest.mark.parametrize("iters", [5, 50])
@pytest.mark.parametrize("lam", [0.15, 0.05])
@pytest.mark.parametrize("n,m", [(1, 1), (2, 2), (7, 7), (64, 64), (7, 12), (64, 5)])
def test_sinkhorn_matches_pot(n, m, lam, iters, log_domain):
    cost, a, b = _problem(n, m, seed=n * 100 + m)
    expected = _pot_plan(cost, a, b, lam, iters, log_domain)
    plan = sinkhorn(cost, lam=lam, iters=iters, a=a, b=b, log_domain=log_domain)
    assert plan.dtype == torch.float64
    torch.testing.assert_close(plan, expected, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(plan.sum(1), a)  # POT's order: the rows are exact after every iteration
    plan32 = sinkhorn(cost.float(), lam=lam, iters=iters, a=a.float(), b=b.float(), log_domain=log_domain)
    assert plan32.dtype == torch.float32
    torch.testing.assert_close(plan32.double(), expected, atol=1e-5, rtol=1e-4)


def test_sinkhorn_uniform_default():
    cost, _, _ = _problem(9, 4, seed=1)
    expected = _pot_plan(cost, torch.full((9,), 1 / 9, dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64),
                         0.15, 5, True)
    torch.testing.assert_close(sinkhorn(cost), expected, atol=1e-12, rtol=1e-9)


def test_small_lambda_log_domain_stable_where_plain_fails():
    ot = _pot()
    cost, a, b = _problem(8, 8, seed=3, dtype=torch.float32)
    plain = sinkhorn(cost, lam=1e-3, iters=50, a=a, b=b, log_domain=False)
    assert not torch.isfinite(plain).all() or plain.abs().sum() == 0  # exp(-cost / 1e-3) underflows to 0
    short = sinkhorn(cost, lam=1e-3, iters=5, a=a, b=b)
    assert torch.isfinite(short).all()
    torch.testing.assert_close(short.double(), _pot_plan(cost.double(), a.double(), b.double(), 1e-3, 5, True),
                               atol=1e-5, rtol=1e-4)
    plan = sinkhorn(cost, lam=1e-3, iters=5000, a=a, b=b)  # ~0.15 s; small lam converges slowly
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(1), a, atol=1e-5, rtol=0)  # float32 exp of logits ~1e3
    torch.testing.assert_close(plan.sum(0), b, atol=1e-5, rtol=0)
    assert (plan.sum(0) - b).abs().max() < (short.sum(0) - b).abs().max() / 10  # the columns converge
    exact = ot.emd2(a.double().numpy(), b.double().numpy(), cost.double().numpy())  # unregularised OT cost
    assert abs(float((plan * cost).sum()) - exact) < 2e-3


def test_sinkhorn_batched_equals_per_item():
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(3, 6, 6, generator=g)  # [B, N, N]
    plans = sinkhorn(cost, lam=0.05, iters=7)
    for i in range(3):
        torch.testing.assert_close(plans[i], sinkhorn(cost[i], lam=0.05, iters=7))
    cost4 = torch.rand(2, 3, 4, 5, generator=g)  # [B1, B2, N, M]
    a = torch.softmax(torch.randn(2, 3, 4, generator=g), -1)  # [B1, B2, N]
    b = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)  # [B1, B2, M]
    for log_domain in (True, False):
        plans = sinkhorn(cost4, lam=0.1, iters=5, a=a, b=b, log_domain=log_domain)
        for i in range(2):
            for j in range(3):
                one = sinkhorn(cost4[i, j], lam=0.1, iters=5, a=a[i, j], b=b[i, j], log_domain=log_domain)
                torch.testing.assert_close(plans[i, j], one)


def test_sinkhorn_dtypes_and_gradients():
    cost, _, _ = _problem(5, 6, seed=5, dtype=torch.float32)
    half = sinkhorn(cost.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, sinkhorn(cost.half().float()))
    assert sinkhorn(cost.bfloat16()).dtype == torch.float32
    leaf = cost.clone().requires_grad_()
    (sinkhorn(leaf) * cost).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_sinkhorn_errors():
    cost, _, _ = _problem(3, 3, seed=6, dtype=torch.float32)
    for bad in (float("nan"), float("inf")):
        broken = cost.clone()
        broken[1, 2] = bad
        with pytest.raises(ZeroshiftError, match="NaN/inf") as info:
            sinkhorn(broken)
        assert "\n" not in str(info.value)
    with pytest.raises(ZeroshiftError, match=r"\[\.\.\., N, M\]"):
        sinkhorn(torch.zeros(3))
    with pytest.raises(ZeroshiftError, match=r"\[\.\.\., N, M\]"):
        sinkhorn(torch.zeros(0, 3))
    with pytest.raises(ZeroshiftError, match="lam > 0"):
        sinkhorn(cost, lam=0.0)
    with pytest.raises(ZeroshiftError, match="iters >= 1"):
        sinkhorn(cost, iters=0)
    with pytest.raises(ZeroshiftError, match="marginal b"):
        sinkhorn(cost, b=torch.ones(4) / 4)
    with pytest.raises(ZeroshiftError, match="marginal a has negative"):
        sinkhorn(cost, a=torch.tensor([0.5, 0.7, -0.2]))


def _otter_reference(img, txt, alpha, lam, iters, img_ref=None, txt_ref=None):
    """OTTER's recipe written out (facebookresearch/OTTER, models/model.py + model_util.py), one process."""
    img, txt = F.normalize(img.double(), dim=1), F.normalize(txt.double(), dim=1)
    iref = img if img_ref is None else F.normalize(img_ref.double(), dim=1)
    tref = txt if txt_ref is None else F.normalize(txt_ref.double(), dim=1)
    n = img.shape[0]
    diag = torch.eye(n, dtype=torch.float64) * 100.0
    q = torch.exp((iref @ iref.T - diag + tref @ tref.T - diag + img @ txt.T) / lam)
    q = q / q.sum()
    for _ in range(iters):  # rows, then columns
        q = q / q.sum(dim=1, keepdim=True) / n
        q = q / q.sum(dim=0, keepdim=True) / n
    q = q / q.sum(dim=1, keepdim=True)
    return alpha * torch.eye(n, dtype=torch.float64) + (1 - alpha) * q


def _pairs(n: int, seed: int, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g)  # [N, d]
    txt = img + 0.8 * torch.randn(n, d, generator=g)  # [N, d], correlated with its image
    return img, txt


def test_soft_labels_match_otter_both_directions():
    img, txt = _pairs(12, seed=7)
    g = torch.Generator().manual_seed(8)
    img_ref, txt_ref = torch.randn(12, 40, generator=g), torch.randn(12, 24, generator=g)
    for kwargs in ({}, {"img_ref": img_ref, "txt_ref": txt_ref}):
        for alpha, lam, iters in ((0.5, 0.15, 5), (0.8, 0.05, 20)):
            y = ot_soft_labels(img.double(), txt.double(), alpha=alpha, lam=lam, iters=iters, **kwargs)
            torch.testing.assert_close(y, _otter_reference(img, txt, alpha, lam, iters, **kwargs), atol=1e-10, rtol=0)
            swapped = {"img_ref": kwargs.get("txt_ref"), "txt_ref": kwargs.get("img_ref")}
            y_txt = ot_soft_labels(txt.double(), img.double(), alpha=alpha, lam=lam, iters=iters, **swapped)
            expected = _otter_reference(txt, img, alpha, lam, iters, **swapped)
            torch.testing.assert_close(y_txt, expected, atol=1e-10, rtol=0)
    y = ot_soft_labels(img, txt, img_ref=img_ref, txt_ref=txt_ref)
    assert not torch.allclose(y, ot_soft_labels(img, txt))  # the references are used
    torch.testing.assert_close(ot_soft_labels(img, txt, img_ref=img, txt_ref=txt), ot_soft_labels(img, txt))


def test_soft_labels_rows_diagonal_dtype():
    img, txt = _pairs(32, seed=9)
    for alpha in (0.0, 0.5, 0.8):
        y = ot_soft_labels(img, txt, alpha=alpha)
        assert y.shape == (32, 32) and y.dtype == torch.float32
        torch.testing.assert_close(y.sum(1), torch.ones(32))
        assert (y.diagonal() >= alpha).all() and (y >= 0).all()
        assert y.diagonal().max() - alpha < 1e-6  # the plan puts no mass on the pushed-down diagonal
    leaf = img.clone().requires_grad_()
    assert not ot_soft_labels(leaf, txt).requires_grad
    half = ot_soft_labels(img.half(), txt.half())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, ot_soft_labels(img.half().float(), txt.half().float()))


def test_soft_labels_duplicates_and_single_pair():
    img, txt = _pairs(8, seed=10)
    img[5], txt[5] = img[2], txt[2]  # pair 5 duplicates pair 2
    y = ot_soft_labels(img, txt)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(1), torch.ones(8))
    assert y[2].argsort()[-2] == 5 and y[5].argsort()[-2] == 2  # the duplicate gets the off-diagonal mass
    assert y[2, 5] > 0.25
    same = ot_soft_labels(img[:1].expand(6, -1), txt[:1].expand(6, -1))  # a whole batch of one pair
    off = (1 - 0.5) / 5
    torch.testing.assert_close(same, 0.5 * torch.eye(6) + off * (1 - torch.eye(6)))
    for iters in (1, 5):
        torch.testing.assert_close(ot_soft_labels(img[:1], txt[:1], iters=iters), torch.ones(1, 1))


def test_soft_labels_errors():
    img, txt = _pairs(4, seed=11)
    broken = img.clone()
    broken[0, 0] = float("nan")
    with pytest.raises(ZeroshiftError, match="NaN/inf"):
        ot_soft_labels(broken, txt)
    with pytest.raises(ZeroshiftError, match="txt must match"):
        ot_soft_labels(img, txt[:3])
    with pytest.raises(ZeroshiftError, match=r"img_ref must be \[4, d\]"):
        ot_soft_labels(img, txt, img_ref=torch.randn(5, 8))
    with pytest.raises(ZeroshiftError, match="alpha"):
        ot_soft_labels(img, txt, alpha=1.5)
    with pytest.raises(ZeroshiftError, match="N >= 1"):
        ot_soft_labels(img[:0], txt[:0])


def test_gather_cost_single_process_is_identity():
    img, txt = _pairs(5, seed=12)
    gathered, rows = gather_rows(img, txt, None, None)
    assert gathered[0] is img and gathered[1] is txt and gathered[2] is None and rows == slice(0, 5)
    with pytest.raises(ZeroshiftError, match="4 rows"):
        gather_rows(img[:4], txt)


SIZES = (5, 3)  # uneven local batches: rank 0 holds pairs 0-4, rank 1 pairs 5-7


def _global_batch():
    img, txt = _pairs(sum(SIZES), seed=13)
    g = torch.Generator().manual_seed(14)
    return img, txt, torch.randn(sum(SIZES), 20, generator=g), torch.randn(sum(SIZES), 12, generator=g)


def _gather_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(SIZES))
    try:
        start = sum(SIZES[:rank])
        local = [t[start:start + SIZES[rank]] for t in _global_batch()]
        (img, txt, iref, tref), rows = gather_rows(*local)
        y_img = ot_soft_labels(img, txt, img_ref=iref, txt_ref=tref)[rows]  # [n, G]
        y_txt = ot_soft_labels(txt, img, img_ref=tref, txt_ref=iref)[rows]  # [n, G]
        leaf = local[0].clone().requires_grad_()
        weights = torch.randn(sum(SIZES), leaf.shape[1], generator=torch.Generator().manual_seed(15))  # same on ranks
        (gathered,), _ = gather_rows(leaf)
        (gathered * weights).sum().backward()  # each rank's loss reaches every rank's rows
        torch.save({"rows": (rows.start, rows.stop), "img": y_img, "txt": y_txt, "grad": leaf.grad,
                    "weights": weights[rows]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_cost_two_ranks_match_one_process(tmp_path):
    mp.spawn(_gather_worker, args=(free_port(), str(tmp_path)), nprocs=len(SIZES), join=True)  # ~4 s, imports
    img, txt, iref, tref = _global_batch()
    y_img = ot_soft_labels(img, txt, img_ref=iref, txt_ref=tref)
    y_txt = ot_soft_labels(txt, img, img_ref=tref, txt_ref=iref)
    for rank in range(len(SIZES)):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        start = sum(SIZES[:rank])
        assert got["rows"] == (start, start + SIZES[rank])
        torch.testing.assert_close(got["img"], y_img[start:start + SIZES[rank]])
        torch.testing.assert_close(got["txt"], y_txt[start:start + SIZES[rank]])
        torch.testing.assert_close(got["grad"], len(SIZES) * got["weights"])


def test_default_shifted_kernel_equals_the_log_domain_and_falls_back_for_tiny_lam():
    torch.manual_seed(0)
    for n, m, lam in ((7, 12, 0.15), (64, 64, 0.05), (512, 512, 0.15)):
        cost = torch.randn(n, m) + 200 * torch.eye(n, m)  # OTTER pushes the diagonal similarities down: cost up
        torch.testing.assert_close(sinkhorn(cost, lam=lam), sinkhorn(cost, lam=lam, log_domain=True), atol=1e-6, rtol=1e-4)
    cost = torch.rand(16, 16) * 5
    tiny = sinkhorn(cost, lam=1e-3)  # the shifted kernel leaves float range here: the log domain answers
    assert torch.isfinite(tiny).all()
    torch.testing.assert_close(tiny, sinkhorn(cost, lam=1e-3, log_domain=True))


def test_the_pair_gives_both_directions_of_ot_soft_labels():
    torch.manual_seed(1)
    img, txt, iref, tref = torch.randn(9, 6), torch.randn(9, 6), torch.randn(9, 11), torch.randn(9, 5)
    y_it, y_ti = ot_soft_label_pair(img, txt, 0.5, 0.15, 5, iref, tref)
    torch.testing.assert_close(y_it, ot_soft_labels(img, txt, 0.5, 0.15, 5, iref, tref))
    torch.testing.assert_close(y_ti, ot_soft_labels(txt, img, 0.5, 0.15, 5, tref, iref))
