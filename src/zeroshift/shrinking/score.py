"""How a candidate is judged without labels: on the held-out images, how often its zero-shot top-1 is the
teacher's, over the user's labels and over a broad vocabulary (the 1000 ImageNet names), and the mean
cosine to the teacher's embedding; accuracy too where the held-out images carry labels the user's list
names. The teacher's side is computed once and saved (judge.safetensors), so a resumed shrink needs no
teacher pass to score the candidates left."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cache import embed
from ..data.base import DataSource
from ..errors import DataError
from ..methods.holdout import Agreement


def held_embeddings(model, sources: list[DataSource], runtime: str, progress: bool,
                    rows: list[np.ndarray] | None = None, role: str | None = None) -> tuple[torch.Tensor, list[np.ndarray]]:
    """`model`'s embeddings of the held-out sources, concatenated [n, d], and the source rows of each
    source's part; with `rows`, exactly those rows (the teacher's), so two models line up image by image."""
    parts, kept = [], []
    for i, source in enumerate(sources):
        feats = embed(model, source, runtime=runtime, progress=progress, role=role)
        want = feats.index if rows is None else rows[i]
        where = np.searchsorted(feats.index, want)
        if np.any(where >= len(feats.index)) or np.any(feats.index[np.minimum(where, len(feats.index) - 1)] != want):
            raise DataError(f"{getattr(model, 'spec', model)} could not read held-out images of {source.spec} that the "
                            "teacher read; they cannot be compared image by image")
        parts.append(torch.from_numpy(np.asarray(feats.gather(where), dtype=np.float32)))  # [n_i, d]
        kept.append(want)
    return torch.cat(parts), kept


def true_labels(sources: list[DataSource], rows: list[np.ndarray], labels: list[str]) -> torch.Tensor:
    """The index into `labels` of each held-out image's own class [n], -1 where the source has no label or
    its class is not among `labels` (matched case-insensitively)."""
    wanted = {name.casefold(): i for i, name in enumerate(labels)}
    out = []
    for source, kept in zip(sources, rows):
        if source.labels is None or not source.classes:
            out.append(np.full(len(kept), -1))
            continue
        mapping = np.array([wanted.get(c.casefold(), -1) for c in source.classes] + [-1])  # [classes + 1]
        own = np.asarray(source.labels)[kept]  # [n_i], -1 unknown
        out.append(mapping[np.where(own >= 0, own, len(source.classes))])
    return torch.from_numpy(np.concatenate(out)).long()


class Judge:
    """The teacher's side of the held-out scores: its embeddings [n, d], the user's label vectors [C, d], the
    vocabulary's [V, d] and the true labels [n] (-1 unknown)."""

    def __init__(self, teacher: torch.Tensor, label_weights: torch.Tensor, vocab_weights: torch.Tensor,
                 truth: torch.Tensor) -> None:
        self.teacher, self.truth = teacher.float(), truth.long()
        self.label_weights, self.vocab_weights = label_weights.float(), vocab_weights.float()
        self.labels = Agreement(self.teacher, self.label_weights)
        self.vocab = Agreement(self.teacher, self.vocab_weights)

    def __call__(self, emb: torch.Tensor) -> dict:
        """Scores of a model's embeddings of the same held-out images [n, d]."""
        if emb.shape != self.teacher.shape:
            raise DataError(f"held-out embeddings of shape {tuple(emb.shape)} do not match the teacher's "
                            f"{tuple(self.teacher.shape)}")
        on_labels = self.labels(emb)
        known = self.truth >= 0
        accuracy = None if not bool(known.any()) else \
            (self.labels.top1(emb)[known] == self.truth[known]).float().mean().item()
        return {"agreement": on_labels["agreement"], "agreement_vocab": self.vocab(emb)["agreement"],
                "cosine": on_labels["cosine"], "accuracy": accuracy, "labelled": int(known.sum()),
                "images": len(emb)}

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tmp = path.with_name(path.name + ".tmp")
        save_file({"teacher": self.teacher.contiguous(), "label_weights": self.label_weights.contiguous(),
                   "vocab_weights": self.vocab_weights.contiguous(), "truth": self.truth.contiguous()}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Judge":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["teacher"], t["label_weights"], t["vocab_weights"], t["truth"])


__all__ = ["Judge", "held_embeddings", "true_labels"]
