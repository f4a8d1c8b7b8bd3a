"""The zero-shot classifier: class names x prompt templates -> one unit vector per class (CLIP's recipe)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ZeroshiftError
from ..models.vlm import VLM


def check_classnames(classnames: Sequence[str], at_least: int = 1) -> list[str]:
    """The class names, stripped; raises ZeroshiftError on an empty list, a blank name, a duplicate or
    fewer than `at_least` names (2 where the labels are ranked: one label always has probability 1)."""
    if isinstance(classnames, str):
        raise ZeroshiftError(f"labels must be a list of strings, not the string {classnames[:60]!r}; "
                             "split it first (zeroshot.labels.parse_labels)")
    if classnames is None or len(classnames) == 0:
        raise ZeroshiftError("no class names given: a zero-shot classifier needs at least one label")
    names, seen = [], {}
    for i, name in enumerate(classnames):
        if not isinstance(name, str) or not name.strip():
            raise ZeroshiftError(f"class name {i} is empty ({name!r}); every label needs some text")
        key = name.strip().casefold()
        if key in seen:
            raise ZeroshiftError(
                f"duplicate class name {name.strip()!r} (labels {seen[key]} and {i}); labels must differ"
            )
        seen[key] = i
        names.append(name.strip())
    if len(names) < at_least:
        raise ZeroshiftError(f"ranking needs at least {at_least} labels, got {len(names)} ({', '.join(map(repr, names))}): "
                             "one label always has probability 1; give labels as 'a,b,c' or a file, one per line")
    return names


def zeroshot_weights(
    model: VLM, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Class weights [C, d]: per class, embed every template, normalise, average, normalise."""
    names = check_classnames(classnames)
    if not templates:
        raise ZeroshiftError("no prompt templates given; use e.g. ['a photo of a {c}.']")
    for t in templates:
        if "{c}" not in t:
            raise ZeroshiftError(f"template {t!r} has no '{{c}}' where the class name goes")
    prompts = [t.format(c=name) for name in names for t in templates]  # class-major, C * P
    chunks = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="class prompts", unit="batch",
                      disable=not progress, leave=False):
        chunks.append(model.encode_text(prompts[start:start + batch_size]).float().cpu())  # [B, d]
    emb = F.normalize(torch.cat(chunks), dim=-1)  # [C * P, d]
    emb = emb.view(len(names), len(templates), -1).mean(dim=1)  # [C, d]
    return F.normalize(emb, dim=-1)


def classify(image_features: torch.Tensor | np.ndarray, weights: torch.Tensor) -> torch.Tensor:
    """Logits [N, C] = 100 * normalize(image_features [N, d]) @ weights[C, d].T."""
    feats = torch.as_tensor(image_features).float().to(weights.device)
    return 100.0 * F.normalize(feats, dim=-1) @ weights.float().T  # [N, C]
