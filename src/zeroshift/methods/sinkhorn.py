"""Entropic optimal transport for OTTER's soft labels (the `align` method's `ot` loss, DESIGN 3.3).

- `sinkhorn`: batched Sinkhorn plan, in the log domain (stable down to lam = 1e-3) or the plain one.
  It follows POT's convention: u starts uniform, and each iteration updates v (columns) and then u
  (rows), so after any number of iterations the rows sum to `a` exactly and the columns approach `b`.
  With `stopThr=0` it equals `ot.bregman.sinkhorn_log` (log domain) and `ot.sinkhorn(method="sinkhorn")`
  (plain) run for `numItermax=iters`.
- `ot_soft_labels`: OTTER's targets Y = alpha I + (1 - alpha) M* for a batch of image/text pairs.

What OTTER does (Wu et al., ICLR 2022; facebookresearch/OTTER, models/model.py and model_util.py):
- image->text cost C = -(S_vv + S_tt + S_vt) from the teacher's L2-normalised embeddings, with 100
  subtracted from the diagonals of S_vv and S_tt (kept here: for lam up to ~1 the plan's diagonal is then
  0 to float32 precision).
- text->image is its own problem, cost -(S_vv + S_tt + S_tv) = C.T with its own Sinkhorn run, not Y.T
  renormalised. Here that is `ot_soft_labels(txt, img, img_ref=txt_ref, txt_ref=img_ref)`.
- OTTER's loop scales rows and then columns, so its plan has exact columns before it is row-normalised.
  That is POT's order on the transposed cost, so M* = rownorm(sinkhorn(C.T).T) reproduces OTTER's targets
  exactly (in POT's order on C the rows are already exact and the row normalisation would do nothing).
- OTTER all-gathers cost rows and masks the diagonal with eye(local, global), which misses the true
  diagonal on ranks > 0; here the embeddings are gathered and the diagonal is that of the global batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ZeroshiftError

DIAGONAL_PUSH = 100.0  # subtracted from the diagonals of S_vv and S_tt, as OTTER does


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (half and bfloat16 are cast up)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _marginal(weights: Tensor | None, size: int, name: str, like: Tensor) -> Tensor:
    """Log of a marginal of `size` entries (uniform when None), broadcastable to like's leading dims."""
    if weights is None:
        return torch.full(like.shape[:-2] + (size,), -math.log(size), dtype=like.dtype, device=like.device)
    if weights.shape[-1:] != (size,):
        raise ZeroshiftError(f"sinkhorn: marginal {name} has shape {tuple(weights.shape)}; its last dim must be {size}")
    weights = weights.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(weights).all() & (weights >= 0).all()):
        raise ZeroshiftError(f"sinkhorn: marginal {name} has negative, NaN or inf entries; pass non-negative weights")
    return weights.log()


def sinkhorn(cost: Tensor, lam: float = 0.15, iters: int = 5, a: Tensor | None = None, b: Tensor | None = None,
             log_domain: bool | None = None) -> Tensor:
    """Entropic OT plan P = diag(u) exp(-cost / lam) diag(v) for cost [..., N, M], marginals a [..., N], b [..., M].

    Marginals default to uniform (1/N, 1/M). Computed in float32 (float64 if the cost is float64); the plan
    is returned in that dtype, so half or bfloat16 costs give a float32 plan (entries ~1/(NM) would fall
    below half's normal range). Differentiable; wrap in `torch.no_grad()` for targets.

    `log_domain`: True iterates with logsumexp (stable for any lam); False with the plain kernel (POT's
    `ot.sinkhorn`, which under/overflows for small lam); None (default) takes the first half-step in the
    log domain and the rest with the kernel shifted by each row's maximum, which is exact in arithmetic
    and needs one exp pass instead of one per half-step, falling back to the log domain where a scaling
    leaves float range (small lam).
    """
    if cost.dim() < 2 or cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise ZeroshiftError(f"sinkhorn: cost must be [..., N, M] with N, M >= 1; got shape {tuple(cost.shape)}")
    if not lam > 0 or iters < 1:
        raise ZeroshiftError(f"sinkhorn: needs lam > 0 and iters >= 1; got lam={lam}, iters={iters}")
    cost = cost.to(_compute_dtype(cost.dtype))
    if not bool(torch.isfinite(cost).all()):
        raise ZeroshiftError("sinkhorn: the cost matrix has NaN/inf entries; check the embeddings it was built from")
    n, m = cost.shape[-2:]
    log_a = _marginal(a, n, "a", cost)  # [..., N]
    log_b = _marginal(b, m, "b", cost)  # [..., M]
    logits = -cost / lam  # [..., N, M]
    if log_domain is None:
        plan = _shifted(logits, log_a, log_b, iters)
        if plan is not None:
            return plan
        log_domain = True
    if log_domain:
        log_u = torch.zeros_like(logits[..., 0])  # [..., N]
        for _ in range(iters):
            log_v = log_b - torch.logsumexp(logits + log_u.unsqueeze(-1), dim=-2)  # [..., M]
            log_u = log_a - torch.logsumexp(logits + log_v.unsqueeze(-2), dim=-1)  # [..., N]
        return torch.exp(logits + log_u.unsqueeze(-1) + log_v.unsqueeze(-2))  # [..., N, M]
    kernel = torch.exp(logits)  # [..., N, M]; under/overflows for small lam
    weight_a, weight_b = log_a.exp(), log_b.exp()  # [..., N], [..., M]
    u = torch.full_like(kernel[..., 0], 1.0 / n)  # [..., N]
    for _ in range(iters):
        v = weight_b / (kernel.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)  # [..., M]
        u = weight_a / (kernel @ v.unsqueeze(-1)).squeeze(-1)  # [..., N]
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)  # [..., N, M]


def _shifted(logits: Tensor, log_a: Tensor, log_b: Tensor, iters: int) -> Tensor | None:
    """Sinkhorn with the kernel exp(logits - row max): u carries the row maxima, so the plan equals the
    log-domain one; None when a scaling under- or overflows (then the caller uses the log domain)."""
    log_v = log_b - torch.logsumexp(logits, dim=-2)  # [..., M], the first half-step from u = 1
    shift = logits.amax(dim=-1, keepdim=True)  # [..., N, 1]
    kernel = torch.exp(logits - shift)  # [..., N, M], each row's largest entry is 1
    weight_a, weight_b = log_a.exp(), log_b.exp()  # [..., N], [..., M]
    v = log_v.exp()  # [..., M]
    for k in range(iters):
        u = weight_a / (kernel @ v.unsqueeze(-1)).squeeze(-1)  # [..., N], u_true * exp(shift)
        if k == iters - 1:
            break
        v = weight_b / (kernel.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)  # [..., M]
    if not bool(torch.isfinite(u).all() & torch.isfinite(v).all()):  # kernel is in [0, 1]: checks the plan
        return None
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)  # [..., N, M]


def _rows(x: Tensor, n: int, name: str, dtype: torch.dtype) -> Tensor:
    """x as an L2-normalised [n, d] matrix in `dtype`, or a one-line error."""
    if x.dim() != 2 or x.shape[0] != n:
        raise ZeroshiftError(f"ot_soft_labels: {name} must be [{n}, d], one row per pair; got {tuple(x.shape)}")
    return F.normalize(x.detach().to(dtype), dim=-1)


@torch.no_grad()
def ot_soft_label_pair(img: Tensor, txt: Tensor, alpha: float = 0.5, lam: float = 0.15, iters: int = 5,
                       img_ref: Tensor | None = None, txt_ref: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """OTTER's (image->text, text->image) targets, each [N, N] with rows summing to 1, for N image/text
    pairs (row i pairs img[i] with txt[i]).

    S_vv and S_tt come from img_ref / txt_ref when given (e.g. frozen backbone features, any width), else
    from img / txt; S_vt from img / txt. Both directions share S_vv + S_tt, and their two Sinkhorn problems
    (costs C and C.T) are solved in one batched call. No gradient flows; float32 (float64 for float64
    inputs) is returned.
    """
    if img.dim() != 2 or img.shape[0] == 0:
        raise ZeroshiftError(f"ot_soft_labels: img must be [N, d] with N >= 1; got {tuple(img.shape)}")
    if txt.shape != img.shape:
        raise ZeroshiftError(f"ot_soft_labels: txt must match img's shape {tuple(img.shape)}; got {tuple(txt.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ZeroshiftError(f"ot_soft_labels: alpha is the weight of the identity, in [0, 1]; got {alpha}")
    refs = [t.dtype for t in (img_ref, txt_ref) if t is not None]
    dtype = _compute_dtype(img.dtype, txt.dtype, *refs)
    n = img.shape[0]
    img_n, txt_n = _rows(img, n, "img", dtype), _rows(txt, n, "txt", dtype)  # [N, d]
    img_r = img_n if img_ref is None else _rows(img_ref, n, "img_ref", dtype)  # [N, d_v]
    txt_r = txt_n if txt_ref is None else _rows(txt_ref, n, "txt_ref", dtype)  # [N, d_t]
    eye = torch.eye(n, dtype=dtype, device=img.device)  # [N, N]
    same = img_r @ img_r.T + txt_r @ txt_r.T - 2 * DIAGONAL_PUSH * eye  # [N, N] S_vv + S_tt, symmetric
    s_tv = txt_n @ img_n.T  # [N, N] text x image
    costs = torch.stack([-(same + s_tv), -(same + s_tv.T)])  # [2, N, N]: C.T (for image->text), C (text->image)
    plans = sinkhorn(costs, lam=lam, iters=iters).transpose(-1, -2)  # [2, N, N]; OTTER's order: columns exact
    plans = plans / plans.sum(dim=-1, keepdim=True)  # each row sums to 1
    y = alpha * eye + (1.0 - alpha) * plans  # [2, N, N]
    return y[0], y[1]


def ot_soft_labels(img: Tensor, txt: Tensor, alpha: float = 0.5, lam: float = 0.15, iters: int = 5,
                   img_ref: Tensor | None = None, txt_ref: Tensor | None = None) -> Tensor:
    """OTTER's image->text targets Y [N, N] (see ot_soft_label_pair); the text->image targets are
    `ot_soft_labels(txt, img, img_ref=txt_ref, txt_ref=img_ref)`."""
    return ot_soft_label_pair(img, txt, alpha, lam, iters, img_ref, txt_ref)[0]
