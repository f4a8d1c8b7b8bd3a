"""st:NAME_OR_PATH: a sentence-transformers text encoder (a hub name or a folder saved with .save())."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import paths
from ..errors import SpecError, fetch_failed
from . import hub
from .vlm import TextEncoder, TextParts

TEXT_BATCH = 256


class STTextEncoder(TextEncoder):
    """texts -> the model's sentence_embedding [M, dim] (with gradients through forward, for training)."""

    def __init__(self, model: nn.Module, spec: str) -> None:
        super().__init__()
        self.model, self.spec = model, spec
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize
        device = next(self.model.parameters()).device
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tokenize(list(texts)).items()}
        return self.model(features)["sentence_embedding"]  # [M, dim]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        with torch.inference_mode():
            return torch.cat([self(texts[i:i + TEXT_BATCH]).float() for i in range(0, max(len(texts), 1), TEXT_BATCH)])

    def text_parts(self) -> TextParts:
        """The model's modules (transformer, pooling, normalisation) on token ids, and its fast tokenizer."""
        tokenizer = getattr(self.model, "tokenizer", None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return super().text_parts()
        return TextParts(_OnIds(self.model), backend, int(self.model.max_seq_length), "longest",
                         int(tokenizer.pad_token_id or 0), self.spec)


class _OnIds(nn.Module):
    """A SentenceTransformer on token ids and mask [N, L] -> sentence_embedding [N, dim]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]


def load(source: str, spec: str) -> STTextEncoder:
    """A SentenceTransformer from a folder or hub name, on the CPU; hub failure -> MissingWeights (one
    quiet line at once where the hub cannot be reached, see hub.py)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar on every load, even of a 90 MB model
    instead = "st:/path/to/folder (saved with SentenceTransformer.save())"
    if Path(source).is_dir():
        try:
            model = SentenceTransformer(source, device="cpu")
        except OSError as e:
            raise fetch_failed(spec, instead, e) from e
    else:
        with hub.fetching(spec, instead):
            model = SentenceTransformer(source, device="cpu")
    return STTextEncoder(model.eval(), spec).eval()


def create(arg: str) -> STTextEncoder:
    """Build a sentence-transformers text encoder from a hub name or a local folder."""
    if not arg:
        raise SpecError("st: needs a model name or folder, e.g. st:all-MiniLM-L6-v2")
    source = paths.local_or_hub(arg, f"st:{arg}", "sentence-transformers folder")
    return load(source, f"st:{source}")
