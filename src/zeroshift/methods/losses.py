"""Every loss of the three methods, in one place (open_clip's loss.py is the model): each is an
nn.Module returning named terms, summed by the training loop. Losses over a batch's pairs (InfoNCE,
OTTER's soft targets) score this rank's rows against the global batch under torchrun
(distributed.gather_rows), so DDP's gradient average equals one process at the global batch.

- transfer (Zoom-shot): MSELoss, CycleLoss, PGKDLoss, on a batch of Views, summed side by side by Terms.
- distill: L2Loss, CosineLoss, KLLoss, ContrastiveTextLoss, ContrastiveFeatureLoss, on (student, batch);
  Terms puts one beside the KL over the user's labels.
- align (OTTER): AlignLoss, symmetric cross-entropy against identity, smoothed, kd or ot soft targets.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..errors import ZeroshiftError
from ..models.bridge import Bridge
from .sinkhorn import DIAGONAL_PUSH, ot_soft_label_pair

Targets = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # N -> (a->b, b->a) soft targets [N, N]


# ---------------------------------------------------------------- shared pieces
def prompt_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) of the zero-shot distributions given by logits [B, C], batch mean."""
    return F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [B, N] against target distributions [B, N] (rows sum to 1), batch mean."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def contrastive(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float,
                targets: Targets | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of paired unit rows a [B, d], b [B, d]: this rank's rows against the columns
    of the global batch. Without `targets` the positives are the pairs themselves (InfoNCE)."""
    (a_all, b_all), rows = dist.gather_rows(a, b)  # [N, d] over all ranks; `rows` = this rank's
    logits_ab, logits_ba = scale * a @ b_all.T, scale * b @ a_all.T  # [B, N]
    if targets is None:
        pos = torch.arange(rows.start, rows.stop, device=a.device)  # [B] column of each row's pair
        return 0.5 * (F.cross_entropy(logits_ab, pos) + F.cross_entropy(logits_ba, pos))
    y_ab, y_ba = targets(len(a_all))  # [N, N] each
    return 0.5 * (soft_cross_entropy(logits_ab, y_ab[rows]) + soft_cross_entropy(logits_ba, y_ba[rows]))


# ---------------------------------------------------------------- transfer (Zoom-shot)
@dataclass
class Views:
    """One batch in the aligned spaces: source us [B, m], teacher uc [B', d] (B' = B when paired),
    hs = h(us) [B, d], prompt minibatch ut [T, d]; raw teacher features zc [B', d]."""

    us: torch.Tensor
    uc: torch.Tensor
    hs: torch.Tensor
    ut: torch.Tensor
    zc: torch.Tensor


class MSELoss(nn.Module):
    """Paired reconstruction ||h(z_s) - z_c||^2."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, bridge: Bridge, v: Views) -> dict[str, torch.Tensor]:
        return {"mse": self.weight * F.mse_loss(v.hs, v.uc)}


class CycleLoss(nn.Module):
    """g(h(.)) = id on source images, h(g(.)) = id on teacher images and on prompt embeddings."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, bridge: Bridge, v: Views) -> dict[str, torch.Tensor]:
        w = self.weight
        return {"cycle_source": w * F.mse_loss(bridge.g(v.hs), v.us),
                "cycle_teacher": w * F.mse_loss(bridge.h(bridge.g(v.uc)), v.uc),
                "cycle_text": w * F.mse_loss(bridge.h(bridge.g(v.ut)), v.ut)}


class PGKDLoss(nn.Module):
    """Prompt-guided distillation: the teacher's zero-shot distribution over the class vectors W is the
    target for the bridge's. Unpaired, the per-image target exists only through the cycle h(g(z_c)),
    and the source batch matches the teacher batch's mean distribution over the global batch."""

    def __init__(self, weight: float, classes: torch.Tensor, tau: float, variant: str, paired: bool) -> None:
        super().__init__()
        self.weight, self.tau, self.variant, self.paired = weight, tau, variant, paired
        self.register_buffer("classes", classes)  # [C, d] unit rows

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.tau * F.normalize(raw, dim=-1) @ self.classes.T  # [B, C]

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.variant == "htce":
            return F.cross_entropy(student, teacher.argmax(dim=1))
        return prompt_kl(student, teacher)

    def forward(self, bridge: Bridge, v: Views) -> dict[str, torch.Tensor]:
        target = self.logits(v.zc).detach()  # [B', C]
        student = self.logits(bridge.from_teacher(v.hs))  # [B, C]
        if self.paired:
            return {"pgkd": self.weight * self.distill(student, target)}
        cycled = self.logits(bridge.from_teacher(bridge.h(bridge.g(v.uc))))  # [B', C]
        p_c = dist.global_mean(target.softmax(-1).mean(0))  # [C] the teacher batch's mean distribution
        p_s = dist.global_mean(student.softmax(-1).mean(0))  # [C]
        marginal = (p_c * (p_c.clamp_min(1e-12).log() - p_s.clamp_min(1e-12).log())).sum()
        return {"pgkd_cycle": self.weight * self.distill(cycled, target), "pgkd_marginal": self.weight * marginal}


# ---------------------------------------------------------------- distill
class L2Loss(nn.Module):
    """||s - t||^2, on unit-normalised embeddings when `normalize`."""

    def __init__(self, normalize: bool) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, s: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        t = batch["target"]
        if self.normalize:
            s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        return {"l2": (s - t).pow(2).sum(-1).mean()}


class CosineLoss(nn.Module):
    def forward(self, s: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return {"cosine": (1 - F.cosine_similarity(s, batch["target"], dim=-1)).mean()}


class KLLoss(nn.Module):
    """`weight` x KL(p_t || p_s) of the zero-shot distributions over `classes` [K, d] (unit rows), as the
    term `name` (distill's `kl` over a prompt vocabulary, or `kl-labels` over the user's labels)."""

    def __init__(self, classes: torch.Tensor, tau: float, weight: float = 1.0, name: str = "kl") -> None:
        super().__init__()
        self.register_buffer("classes", classes.float(), persistent=False)
        self.tau, self.weight, self.name = tau, weight, name

    def forward(self, s: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        student = self.tau * F.normalize(s, dim=-1) @ self.classes.T  # [B, K]
        teacher = self.tau * F.normalize(batch["target"], dim=-1) @ self.classes.T  # [B, K]
        return {self.name: self.weight * prompt_kl(student, teacher)}


class Terms(nn.ModuleList):
    """Several losses on the same inputs, their named terms side by side (the loop sums them): transfer's
    Zoom-shot terms on (bridge, views), a distill loss beside the KL over the user's labels on (student, batch)."""

    def forward(self, *inputs) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for loss in self:
            terms.update(loss(*inputs))
        return terms


class ContrastiveTextLoss(nn.Module):
    """InfoNCE between student embeddings and the teacher's text embeddings `texts` [U, d] of the rows."""

    def __init__(self, texts: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.register_buffer("texts", texts.float(), persistent=False)
        self.temperature = temperature

    def forward(self, s: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        t = self.texts[batch["text"]]  # [B, d]
        return {"contrastive-text": contrastive(F.normalize(s, dim=-1), F.normalize(t, dim=-1), 1 / self.temperature)}


class ContrastiveFeatureLoss(nn.Module):
    """InfoNCE between student and teacher image embeddings."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, s: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        t = batch["target"]  # [B, d]
        return {"contrastive-feature": contrastive(F.normalize(s, dim=-1), F.normalize(t, dim=-1),
                                                   1 / self.temperature)}


# ---------------------------------------------------------------- align (OTTER)
def kd_targets(img, txt, img_ref, txt_ref, alpha: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """kd targets: alpha I + (1 - alpha) softmax(-C / temperature), C as OT's (diagonals pushed down)."""
    with torch.no_grad():
        i, t = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
        ir = F.normalize((img if img_ref is None else img_ref).float(), dim=-1)
        tr = F.normalize((txt if txt_ref is None else txt_ref).float(), dim=-1)
        eye = torch.eye(len(i), device=i.device)
        same = ir @ ir.T + tr @ tr.T - 2 * DIAGONAL_PUSH * eye  # [n, n] S_vv + S_tt, diagonals pushed down
        if not torch.isfinite(same).all():
            raise ZeroshiftError("the kd cost matrix has NaN/inf entries")
        cost_it, cost_ti = -(same + i @ t.T), -(same + t @ i.T)  # [n, n]
        return tuple(alpha * eye + (1 - alpha) * F.softmax(-c / temperature, dim=-1) for c in (cost_it, cost_ti))


class AlignLoss(nn.Module):
    """OTTER's objective: symmetric cross-entropy of the image and text embeddings of a batch of pairs
    against soft targets: `infonce` the identity, `ls` alpha on the diagonal and the rest spread evenly,
    `kd` and `ot` from an EMA teacher's embeddings (`teacher` = (img, txt, img_ref, txt_ref) of this
    rank's rows; the references give S_vv and S_tt)."""

    def __init__(self, loss: str, alpha: float, lam: float, sinkhorn_iters: int, kd_temperature: float) -> None:
        super().__init__()
        self.loss, self.alpha, self.lam, self.iters, self.kd_temperature = loss, alpha, lam, sinkhorn_iters, kd_temperature

    def targets(self, n: int, device: torch.device, teacher: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image->text, text->image) targets [n, n] over the global batch, rows summing to 1."""
        eye = torch.eye(n, device=device)
        if self.loss == "infonce" or n == 1:
            return eye, eye
        if self.loss == "ls":
            y = eye * self.alpha + (1 - eye) * (1 - self.alpha) / (n - 1)
            return y, y
        img, txt, img_ref, txt_ref = teacher
        if self.loss == "ot":
            return ot_soft_label_pair(img, txt, self.alpha, self.lam, self.iters, img_ref, txt_ref)
        return kd_targets(img, txt, img_ref, txt_ref, self.alpha, self.kd_temperature)

    def forward(self, zi: torch.Tensor, zt: torch.Tensor, scale: torch.Tensor,
                teacher: tuple | None = None) -> dict[str, torch.Tensor]:
        """zi, zt: this rank's unit image and text embeddings [B, d]; scale: the logit scale."""
        if teacher is not None:
            teacher, _ = dist.gather_rows(*teacher)  # [N, .] each, over the global batch
        return {self.loss: contrastive(zi, zt, scale, lambda n: self.targets(n, zi.device, teacher))}
