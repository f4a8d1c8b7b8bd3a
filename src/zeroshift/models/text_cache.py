"""Text embeddings computed once: a model's embeddings of a list of texts, cached on disk by the model's
spec and weights and the texts themselves (ConSE's class prompts, a teacher's prompt vocabulary)."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .. import paths
from ..errors import CacheError, CacheMismatch
from ..io import write_bytes
from .runtime import weights_digest


def text_embeddings(model: torch.nn.Module, texts: Sequence[str], folder: str, progress: bool = False,
                    batch_size: int = 256) -> torch.Tensor:
    """`model.encode_text(texts)` as float32 [len(texts), model.dim] on the CPU, from the cache in
    $ZEROSHIFT_HOME/<folder>/ when it holds them, else encoded in batches and cached atomically."""
    from safetensors.torch import load_file, save

    texts = list(texts)
    key = "\n".join([model.spec, weights_digest(model), *texts])
    file = paths.home() / folder / f"{paths.slug(model.spec)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if file.is_file():
        emb = load_file(str(file))["embeddings"]
    else:
        chunks = [model.encode_text(texts[s:s + batch_size]).float().cpu()  # [B, d]
                  for s in tqdm(range(0, len(texts), batch_size), desc=folder, unit="batch",
                                disable=not progress, leave=False)]
        emb = torch.cat(chunks) if chunks else torch.zeros(0, model.dim)  # [P, d]
        if not torch.isfinite(emb).all():
            raise CacheError(f"{model.spec} gave NaN or inf text embeddings for the {folder}")
        write_bytes(file, save({"embeddings": emb.contiguous()}, metadata={"model": model.spec}))  # umask honoured
    if emb.shape != (len(texts), model.dim):
        raise CacheMismatch(f"text embedding cache {file} holds {tuple(emb.shape)} embeddings, expected "
                            f"({len(texts)}, {model.dim}): delete it to recompute")
    return emb
