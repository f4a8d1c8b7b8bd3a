"""The bridge of `zeroshift transfer`: a map `h` from a vision encoder's feature space into a VLM's
joint space and its learned inverse `g` (Zoom-shot), with both spaces variance-aligned (Text-to-Concept).

Features are centred and scaled by one scalar per side so that their per-entry variance is `variance`
(Text-to-Concept's 4.5); `h` and `g` work in those aligned spaces, and `forward` / `inverse` take and
return raw features, so cosine between `forward(z)` and the teacher's text embeddings is the zero-shot
score. Every statistic is a buffer, so the state_dict is the whole bridge.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import BRIDGE_KINDS
from ..errors import ZeroshiftError

KINDS = BRIDGE_KINDS
VARIANCE = 4.5  # Text-to-Concept's target per-entry variance for both spaces
HIDDEN = 1024


class ResidualMLP(nn.Module):
    """x -> W x + b + up(gelu(down(x))): an affine map plus one GELU hidden layer. `up` starts at zero,
    so training starts from exactly the affine part (e.g. a closed-form warm start)."""

    def __init__(self, n_in: int, n_out: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.down = nn.Linear(n_in, hidden)
        self.up = nn.Linear(hidden, n_out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.up(F.gelu(self.down(x)))


def _map(kind: str, n_in: int, n_out: int, hidden: int) -> nn.Module:
    return nn.Linear(n_in, n_out) if kind == "linear" else ResidualMLP(n_in, n_out, hidden)


def _affine(module: nn.Module) -> nn.Linear:
    return module if isinstance(module, nn.Linear) else module.linear


class Moments:
    """Running sums over one pass of feature rows: means, variances and centred scatter matrices.

    `update(x)` or, for paired rows, `update(x, y)`; sums are float64, shifted by the first batch's
    mean so that large feature offsets do not cancel. `scatter=False` keeps per-dim sums only.
    """

    def __init__(self, scatter: bool = True) -> None:
        self.scatter = scatter
        self.n = 0
        self.shift: list[torch.Tensor] = []
        self.sums: list[torch.Tensor] = []  # per side [dim]
        self.squares: list[torch.Tensor] = []  # per side: [dim] (scatter=False) or [dim, dim]
        self.cross: torch.Tensor | None = None  # [m, d] for paired rows

    def start(self, *sides: torch.Tensor) -> None:
        """Take the shift from these rows (every rank of a distributed pass must pass the same ones)."""
        self.shift = [s.double().mean(0) for s in sides]
        self.sums = [torch.zeros_like(m) for m in self.shift]
        self.squares = [torch.zeros(len(m), len(m), dtype=torch.float64) if self.scatter
                        else torch.zeros_like(m) for m in self.shift]
        if len(sides) == 2 and self.scatter:
            self.cross = torch.zeros(len(self.shift[0]), len(self.shift[1]), dtype=torch.float64)  # [m, d]

    def update(self, *sides: torch.Tensor) -> None:
        if not self.shift:
            self.start(*sides)
        xs = [(s - m.float()) for s, m in zip(sides, self.shift)]  # shifted, float32 [B, dim]
        for k, x in enumerate(xs):
            self.sums[k] += x.sum(0).double()
            self.squares[k] += (x.T @ x).double() if self.scatter else (x * x).sum(0).double()
        if len(xs) == 2 and self.scatter:
            self.cross += (xs[0].T @ xs[1]).double()  # [m, d]
        self.n += len(sides[0])

    def all_reduce(self) -> None:
        """Sum the running sums over the ranks of a torchrun job (each rank having passed its share of
        the rows after the same `start`); nothing to do in one process."""
        from .. import distributed as dist

        n = torch.tensor([float(self.n)], dtype=torch.float64)
        dist.all_reduce_([n, *self.sums, *self.squares] + ([self.cross] if self.cross is not None else []))
        self.n = int(n.item())

    def mean(self, k: int = 0) -> torch.Tensor:
        return self.shift[k] + self.sums[k] / self.n  # [dim]

    def scatter_matrix(self, k: int) -> torch.Tensor:
        """sum_i (x_i - mean)(x_i - mean)^T, [dim, dim]."""
        s = self.sums[k]
        return self.squares[k] - torch.outer(s, s) / self.n

    def cross_matrix(self) -> torch.Tensor:
        """sum_i (x_i - mean_x)(y_i - mean_y)^T, [m, d]."""
        return self.cross - torch.outer(self.sums[0], self.sums[1]) / self.n

    def variance(self, k: int = 0, center: bool = True) -> float:
        """Per-entry variance: mean over dims of each dim's variance (center), or Text-to-Concept's
        variance of all entries together around one global mean (not center)."""
        sq = torch.diagonal(self.squares[k]) if self.scatter else self.squares[k]  # [dim] shifted
        s, dim = self.sums[k], len(self.sums[k])
        if center:
            return float((sq - s * s / self.n).sum() / (self.n * dim))
        raw_sq = sq + 2 * self.shift[k] * s + self.n * self.shift[k] ** 2  # sum of x^2 per dim
        return float(raw_sq.sum() / (self.n * dim) - (self.mean(k).mean()) ** 2)


class Bridge(nn.Module):
    """h: source features [N, m] -> teacher joint space [N, d], and g: [N, d] -> [N, m], with variance
    alignment. `kind` 'linear' (affine, as in Zoom-shot) or 'mlp' (affine + one GELU hidden layer)."""

    def __init__(self, source_dim: int, teacher_dim: int, kind: str = "linear", hidden: int = HIDDEN,
                 center: bool = True, variance: float = VARIANCE) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ZeroshiftError(f"unknown bridge kind {kind!r}; use {' or '.join(KINDS)}")
        if min(source_dim, teacher_dim, hidden) < 1 or variance <= 0:
            raise ZeroshiftError("bridge dims and hidden size must be positive, and the variance above 0")
        self.kind, self.source_dim, self.teacher_dim = kind, int(source_dim), int(teacher_dim)
        self.hidden, self.center, self.variance = int(hidden), bool(center), float(variance)
        self.h = _map(kind, self.source_dim, self.teacher_dim, self.hidden)
        self.g = _map(kind, self.teacher_dim, self.source_dim, self.hidden)
        self.register_buffer("source_mean", torch.zeros(self.source_dim))
        self.register_buffer("source_scale", torch.ones(()))
        self.register_buffer("teacher_mean", torch.zeros(self.teacher_dim))
        self.register_buffer("teacher_scale", torch.ones(()))

    def config(self) -> dict:
        return {"kind": self.kind, "source_dim": self.source_dim, "teacher_dim": self.teacher_dim,
                "hidden": self.hidden, "center": self.center, "variance": self.variance}

    @classmethod
    def from_config(cls, cfg: dict) -> Bridge:
        try:
            return cls(cfg["source_dim"], cfg["teacher_dim"], cfg["kind"], cfg.get("hidden", HIDDEN),
                       cfg.get("center", True), cfg.get("variance", VARIANCE))
        except (KeyError, TypeError) as e:
            raise ZeroshiftError(f"bridge config {cfg!r} lacks or mistypes {e}") from None

    # ------------------------------------------------------------ variance alignment
    def set_alignment(self, source: Moments, teacher: Moments, source_side: int = 0, teacher_side: int = 0) -> None:
        """Means and scales from the fit data's moments (the given side of each)."""
        with torch.no_grad():
            for name, mom, k in (("source", source, source_side), ("teacher", teacher, teacher_side)):
                var = mom.variance(k, self.center)
                if not var > 0:
                    raise ZeroshiftError(f"the {name} features do not vary across the fit images; a bridge needs "
                                         "at least two different images")
                mean = mom.mean(k).float() if self.center else torch.zeros_like(getattr(self, f"{name}_mean"))
                getattr(self, f"{name}_mean").copy_(mean)
                getattr(self, f"{name}_scale").fill_((self.variance / var) ** 0.5)

    def to_source(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.source_mean) * self.source_scale

    def to_teacher(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.teacher_mean) * self.teacher_scale

    def from_source(self, v: torch.Tensor) -> torch.Tensor:
        return v / self.source_scale + self.source_mean

    def from_teacher(self, u: torch.Tensor) -> torch.Tensor:
        return u / self.teacher_scale + self.teacher_mean

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw source features [N, m] -> raw teacher-space features [N, d]."""
        return self.from_teacher(self.h(self.to_source(z)))

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        """Raw teacher-space features [N, d] -> raw source features [N, m]."""
        return self.from_source(self.g(self.to_teacher(t)))

    # ------------------------------------------------------------ closed form
    def fit_ridge(self, moments: Moments, ridge: float) -> None:
        """Set the affine parts of h and g to the ridge solutions in the aligned spaces, from the
        moments of paired rows (side 0 source, side 1 teacher). The penalty `ridge * v * ||W||^2`, v the
        input's mean per-dim variance, weighs as much as `ridge` images do, so its relative strength
        fades as fit images are added; 0 is ordinary least squares."""
        sx, sy = float(self.source_scale), float(self.teacher_scale)
        xx = moments.scatter_matrix(0) * sx * sx  # [m, m], aligned
        yy = moments.scatter_matrix(1) * sy * sy  # [d, d]
        xy = moments.cross_matrix() * sx * sy  # [m, d]
        mx = (moments.mean(0) - self.source_mean.double()) * sx  # [m] aligned means (0 when centred)
        my = (moments.mean(1) - self.teacher_mean.double()) * sy  # [d]
        for module, a, b, ma, mb in ((self.h, xx, xy, mx, my), (self.g, yy, xy.T, my, mx)):
            lam = ridge * torch.trace(a) / (len(a) * moments.n)
            w = torch.linalg.solve(a + lam * torch.eye(len(a), dtype=a.dtype), b).T  # [out, in]
            with torch.no_grad():
                lin = _affine(module)
                lin.weight.copy_(w.float())
                lin.bias.copy_((mb - w @ ma).float())
