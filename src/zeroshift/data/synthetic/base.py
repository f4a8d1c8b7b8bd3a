"""SyntheticSource: the rows every renderer shares (prompts, labels, keys), the canonical spec and the
fingerprint; metadata needs no rendering."""
from __future__ import annotations

import abc
import hashlib
from typing import Any

import numpy as np

from ..base import DataSource
from .prompts import balanced_order, prompt


class SyntheticSource(DataSource):
    """Rows made from prompts; metadata (classes, labels, captions, keys) needs no rendering."""

    renderer = ""

    def __init__(self, opts: dict[str, Any], classes: list[str], contexts: list[str]) -> None:
        self.opts = opts
        self.n, self.seed, self.size = opts["n"], opts["seed"], opts["size"]
        self.classes = classes
        self.contexts = contexts
        pairs = balanced_order(len(classes), len(contexts), self.seed)  # [C*K, 2]
        rows = pairs[np.arange(self.n) % len(pairs)]  # [n, 2] (class, context)
        self.labels = rows[:, 0].astype(np.int64)
        self.context_index = rows[:, 1].astype(np.int64)
        self.prompts = [prompt(contexts[k], classes[c]) for c, k in pairs]
        self.captions = [self.prompts[i % len(pairs)] for i in range(self.n)]
        self.keys = [f"{i:06d}" for i in range(self.n)]
        self.spec = "synthetic:" + ",".join(f"{k}={opts[k]}" for k in self._spec_keys())
        self._token: str | None = None

    def _spec_keys(self) -> tuple[str, ...]:
        return ("classes", "contexts", "n", "seed", "size", "renderer")

    @abc.abstractmethod
    def _identity(self) -> str:
        """What the renderer draws from (its version, the clip-art set or the pipeline)."""

    def _content_token(self) -> str:
        if self._token is None:
            h = hashlib.sha1(self._identity().encode())
            h.update("\n".join(self.captions).encode())
            h.update(self.labels.tobytes())
            self._token = h.hexdigest()
        return self._token
