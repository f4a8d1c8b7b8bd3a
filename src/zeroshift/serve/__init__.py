"""`zeroshift serve`: an HTTP service (FastAPI) and web page for zero-shot classification with served models.

No web framework below the engine: `config` (ServeConfig), `errors`, `checks` (request fields against
the limits), `batcher`, `served` (one model) and `engine` (the models, the label cache, the work).
`app` is the HTTP layer (`create_app`), imported only when serving, as it needs `zeroshift[serve]`.
"""
from __future__ import annotations

from .config import ServeConfig, bind_warning
from .engine import Engine

__all__ = ["Engine", "ServeConfig", "bind_warning"]
