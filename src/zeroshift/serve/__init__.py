"""`zeroshift serve`: an HTTP service (FastAPI) and web page for zero-shot classification with served models.

No web framework below the engine: `config` (ServeConfig), `errors`, `checks` (request fields against
the limits), `batcher`, `served` (one model) and `engine` (the models, the label cache, the work).
The HTTP layer needs `zeroshift[serve]` and is imported only when serving: `multipart` and `bodies`
(request parsing), `schemas` (the OpenAPI document), `routes`, `app` (`create_app`), and `server`
(how uvicorn runs it, with a deadline on request heads).

`Engine` is imported on first use, so `zeroshift.serve.config` (what `zeroshift serve --help` needs) loads
without torch.
"""
from __future__ import annotations

from typing import Any

from .config import ServeConfig, bind_warning

__all__ = ["Engine", "ServeConfig", "bind_warning"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
