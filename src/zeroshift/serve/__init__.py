"""`zeroshift serve`: an HTTP service (FastAPI) and web page for zero-shot classification with served models.

`engine` holds the models, the label-embedding cache and request batching (no web framework needed);
`app` is the HTTP layer (`create_app`), imported only when serving, as it needs `zeroshift[serve]`.
"""
from __future__ import annotations

from .engine import Engine, ServeConfig, bind_warning

__all__ = ["Engine", "ServeConfig", "bind_warning"]
