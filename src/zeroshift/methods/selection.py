"""Held-out selection for `transfer`: the ridge strength of the closed form and the epoch of a trained
bridge, both chosen by label-free agreement with the teacher on held-out images (holdout.py's split and
scorer), and the record of what the split said for config.json and the model card.

The best epoch itself is kept by the shared loop (train/keep.py, `keep_best`), which saves it in
checkpoints, so a resumed run keeps the same epoch as an uninterrupted one.
"""
from __future__ import annotations

import math

import torch

from ..models.bridge import Bridge, Moments
from .config import RIDGE_GRID
from .holdout import Agreement


class HeldOut:
    """The held-out images' source features [n, m] and teacher embeddings [n, d], scored over the
    vocabulary's class vectors `weights` [C, d] by `Agreement`."""

    def __init__(self, source: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor) -> None:
        self.source = source.float()  # [n, m]
        self.agreement = Agreement(teacher, weights)
        self.images, self.classes = len(source), len(weights)

    @torch.no_grad()
    def score(self, bridge: Bridge) -> dict[str, float]:
        """{agreement, cosine} of `bridge` on the held-out images (evaluated wherever it lives)."""
        device = next(bridge.parameters()).device
        mode = bridge.training
        bridge.eval()
        emb = bridge(self.source.to(device)).cpu()  # [n, d]
        bridge.train(mode)
        return self.agreement(emb)


def key(scores: dict[str, float]) -> tuple[float, float]:
    """What "better" means: higher agreement, then higher cosine."""
    return scores["agreement"], scores["cosine"]


def choose_ridge(bridge: Bridge, moments: Moments, ridge: float, factors: tuple[float, ...], views: int,
                 held: HeldOut) -> tuple[float, list[dict]]:
    """Fit the closed form at `ridge` x each factor and keep the one the held-out images agree with
    most (ties: cosine, then the factor nearest 1); returns (chosen ridge, the grid's scores). The
    ridge counts images: with `views` views per image it weighs `views` rows per unit."""
    grid, best = [], None
    for f in factors:
        value = ridge * f
        bridge.fit_ridge(moments, value * views)
        scores = held.score(bridge)
        grid.append({"ridge": value, **scores})
        rank = (*key(scores), -abs(math.log(f)) if f > 0 else -math.inf)
        if best is None or rank > best[0]:
            best = (rank, value)
    chosen = best[1]
    bridge.fit_ridge(moments, chosen * views)
    return chosen, grid


def record(held: HeldOut, share: float, fit_images: int, grid: list[dict] | None, chosen: float | None,
           start: dict | None, history: list[dict], kept: int | None) -> dict:
    """What the held-out split said, for config.json: the split, the ridge grid, the warm start's and
    each epoch's scores (epoch 1 is the first trained one) and the epoch kept."""
    epochs = [{"epoch": e + 1, "agreement": r["eval/agreement"], "cosine": r["eval/cosine"]}
              for e, r in enumerate(r for r in history if "eval/agreement" in r)]
    scores = {0: start, **{e["epoch"]: e for e in epochs}}
    chosen_scores = scores.get(kept) if kept is not None else None
    return {"share": share, "images": {"fit": fit_images, "held": held.images}, "vocabulary": held.classes,
            "ridge": None if grid is None else {"grid": grid, "chosen": chosen},
            "closed_form": start, "epochs": epochs,
            "kept": None if chosen_scores is None else {"epoch": kept, "agreement": chosen_scores["agreement"],
                                                        "cosine": chosen_scores["cosine"]}}


def verdict(selection: dict, kind: str) -> str:
    """One sentence: what the held-out split chose and, for an mlp bridge, whether it earned its place."""
    kept, start, epochs = selection["kept"], selection["closed_form"], selection["epochs"]
    if kept is None:  # the closed form alone
        r = selection["ridge"]
        chosen = "" if r is None else f" at ridge {r['chosen']:g}, chosen from {len(r['grid'])} values"
        return f"held-out agreement {start['agreement']:.3f} for the closed form{chosen}"
    best_trained = max(epochs, key=key) if epochs else None
    if kind == "mlp" and start is not None and best_trained is not None:
        n = selection["images"]["held"]
        if kept["epoch"] == 0:
            return (f"the mlp bridge did not beat its affine warm start on the {n} held-out images (best epoch "
                    f"{best_trained['epoch']}: agreement {best_trained['agreement']:.3f} against "
                    f"{start['agreement']:.3f}); the warm start was kept, so it works as a linear bridge: "
                    "prefer --bridge linear")
        gain = round((kept["agreement"] - start["agreement"]) * n)  # held-out images won
        p = start["agreement"]
        noise = 2 * math.sqrt(n * p * (1 - p))  # about two binomial standard deviations, in images
        said = ("the mlp bridge earned its place" if gain > noise else
                "the mlp bridge scored above its affine warm start, within the split's noise "
                f"(+{gain} of {n} images; hold out more images to tell)")
        return (f"{said}: epoch {kept['epoch']} agrees {kept['agreement']:.3f} with the teacher on the held-out "
                f"images against {start['agreement']:.3f} for its affine warm start")
    what = "the warm start (closed form)" if kept["epoch"] == 0 else f"epoch {kept['epoch']} of {len(epochs)}"
    extra = "" if start is None or kept["epoch"] == 0 else f"; warm start {start['agreement']:.3f}"
    return f"kept {what}: held-out agreement {kept['agreement']:.3f}{extra}"


def card_lines(config: dict) -> list[str]:
    """The card's rows on what the held-out split chose (none without one)."""
    held = config.get("holdout")
    if not held:
        return []
    lines = [f"| held-out selection | {held['images']['held']} images ({held['share']:g}), scored by top-1 agreement "
             f"with the teacher over {held['vocabulary']} classes (no labels): {verdict(held, config['bridge']['kind'])} |"]
    if held["ridge"]:
        grid = ", ".join(f"{g['ridge']:g}: {g['agreement']:.3f}" for g in held["ridge"]["grid"])
        lines.append(f"| ridge | {held['ridge']['chosen']:g}, chosen by held-out agreement ({grid}) |")
    if held["epochs"]:
        start = held["closed_form"]
        scores = ([f"warm start {start['agreement']:.3f}"] if start else []) + [
            f"{e['epoch']}: {e['agreement']:.3f}" for e in held["epochs"]]
        lines.append(f"| held-out agreement by epoch | {', '.join(scores)} |")
    return lines


__all__ = ["HeldOut", "RIDGE_GRID", "card_lines", "choose_ridge", "record", "verdict"]
