"""The app factory of `zeroshift serve`: a FastAPI app over an Engine, its routes and one-line errors.

Every refusal is `{"error": "one line"}` with its status: RequestError (400, 408, 413, 415, 503), unknown
pages and methods (404, 405), and, logged, anything unexpected (500).
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from ..errors import MissingBackend, ZeroshiftError
from ..models.vlm import VLM
from ..version import __version__
from .checks import ODD, shown
from .config import ServeConfig
from .engine import Engine
from .errors import Busy, RequestError, RequestTimeout, one_line

try:
    import pydantic  # noqa: F401 - the schemas
    import python_multipart  # noqa: F401 - the form bodies
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as e:  # pragma: no cover - depends on the install
    raise MissingBackend(f"zeroshift serve needs {e.name}: pip install 'zeroshift[serve]'") from None

from .routes import STATIC, make_router

__all__ = ["create_app"]

log = logging.getLogger("zeroshift.serve")


def create_app(config: ServeConfig, models: Mapping[str, VLM] | None = None,
               static_dir: str | Path | None = None) -> FastAPI:
    """The service: loads `config.models` once (taking any given in `models`, spec -> VLM, as loaded),
    and serves the API under /v1, /healthz, and the web page in `static_dir` (the packaged one by default)."""
    engine = Engine(config, models)
    static = Path(static_dir) if static_dir is not None else STATIC

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.stop()

    app = FastAPI(title="zeroshift", version=__version__, lifespan=lifespan,
                  description="Zero-shot image classification with free-text labels over the models this server "
                              "was started with. Errors are `{\"error\": \"one line\"}` with a 4xx status.")
    app.state.engine = engine

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if isinstance(exc, Busy) else None
        if isinstance(exc, RequestTimeout):  # the rest of the body may still come: this connection is done
            headers = {"Connection": "close"}
        return JSONResponse({"error": one_line(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        path = request.url.path[:100] if ODD.search(request.url.path) is None else shown(request.url.path, 100)
        text = {404: f"no such page: {path}",
                405: f"{request.method} is not allowed on {path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": text}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request at {where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        text = one_line(exc) if isinstance(exc, ZeroshiftError) else f"internal error ({type(exc).__name__})"
        return JSONResponse({"error": f"{text}; see the server log"}, status_code=500)

    app.include_router(make_router(engine, config, static))
    return app
