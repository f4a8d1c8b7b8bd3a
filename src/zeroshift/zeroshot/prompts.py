"""Prompt vocabularies and their text embeddings: a user file or the ImageNet class names x templates,
encoded once by a teacher's text tower and cached in $ZEROSHIFT_HOME/prompts.

Methods use them as a generic label set: transfer's prompt-guided distillation, distill's KL loss and
its contrastive-text loss (captions are prompts too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.templates import imagenet_classes
from ..errors import ZeroshiftError
from ..models.text_cache import text_embeddings
from ..models.vlm import VLM
from ..paths import user_path

DEFAULT_TEMPLATES = ("a photo of a {c}.",)


@dataclass(frozen=True)
class Prompts:
    """Teacher text embeddings of a prompt vocabulary: `embeddings` [P, d], class-major, `groups` classes
    of P / groups prompts each."""

    texts: tuple[str, ...]
    embeddings: torch.Tensor
    groups: int

    def class_weights(self) -> torch.Tensor:
        """One unit vector per class: the normalised mean of its normalised prompts. [groups, d]"""
        emb = F.normalize(self.embeddings, dim=-1).view(self.groups, -1, self.embeddings.shape[1])
        return F.normalize(emb.mean(dim=1), dim=-1)


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file, one per line; blank lines and '#' comments are skipped."""
    path = user_path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ZeroshiftError(f"cannot read prompt file {path}: {e}") from None
    prompts = list(dict.fromkeys(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")))
    if not prompts:
        raise ZeroshiftError(f"prompt file {path} holds no prompts; write one prompt per line")
    return prompts


def vocabulary(prompts: str | None) -> tuple[list[str], int]:
    """(prompts, number of classes): a user file (one class per line) or ImageNet names x templates."""
    if prompts is not None:
        texts = read_prompt_file(prompts)
        return texts, len(texts)
    names = imagenet_classes()
    return [t.format(c=name) for name in names for t in DEFAULT_TEMPLATES], len(names)


def encode_prompts(teacher: VLM, texts: list[str], groups: int, progress: bool = True,
                   batch_size: int = 256) -> Prompts:
    """The teacher's text embeddings of `texts`, cached in $ZEROSHIFT_HOME/prompts by teacher and prompts."""
    emb = text_embeddings(teacher, texts, "prompts", progress, batch_size)  # [P, d]
    return Prompts(tuple(texts), emb, groups)
