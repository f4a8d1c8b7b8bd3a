"""The routes of the service: the web page and its static files, /healthz, and the /v1 API over an Engine."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

from .bodies import classify_fields, embed_fields, read_request
from .config import ServeConfig
from .engine import Engine
from .schemas import (
    ClassifyResponse,
    EmbedResponse,
    Health,
    ModelsResponse,
    error_responses,
    request_schemas,
)

STATIC = Path(__file__).with_name("static")
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MISSING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>zeroshift</title></head><body>
<h1>zeroshift serve</h1><p>The web page is not installed (no static/index.html in this zeroshift package).
The API works: see <a href="/docs">/docs</a>, <a href="/v1/models">/v1/models</a> and
<a href="/healthz">/healthz</a>.</p></body></html>
"""


def make_router(engine: Engine, config: ServeConfig, static: Path) -> APIRouter:
    """Every route: the page from `static`, /static/NAME, /healthz, /v1/models, /v1/classify, /v1/embed."""
    router = APIRouter()
    limit = int(config.max_upload_mb * 1024 * 1024)
    classify_body, embed_body = request_schemas(config)
    refusals = error_responses(400, 408, 413, 415, 503)

    @router.get("/", include_in_schema=False)
    async def index() -> Any:
        page = static / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})
        return HTMLResponse(_MISSING_PAGE)

    @router.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> FileResponse:
        path = static / name
        if not _STATIC_NAME.fullmatch(name) or not path.is_file() or path.resolve().parent != static.resolve():
            raise HTTPException(404)
        return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @router.get("/healthz", response_model=Health, summary="liveness: answers while models work")
    async def healthz() -> dict:
        return {"status": "ok", "models": len(engine.served), "inflight": engine.inflight}

    @router.get("/v1/models", response_model=ModelsResponse, summary="the models this server serves")
    async def list_models() -> dict:
        return {"models": [s.info for s in engine.served.values()]}

    @router.post("/v1/classify", response_model=ClassifyResponse, responses=refusals, openapi_extra=classify_body,
                 summary="rank free-text labels for each image",
                 description="multipart/form-data (repeated `image` files, `labels`, optional `templates`, `model`) "
                             "or JSON with base64 images. Probabilities are those `zeroshift predict` gives.")
    async def classify(request: Request) -> dict:
        fields = classify_fields(await read_request(request, limit, config.request_timeout_s), config)
        return {"results": await engine.classify(**fields)}

    @router.post("/v1/embed", response_model=EmbedResponse, responses=refusals, openapi_extra=embed_body,
                 summary="joint-space embeddings of texts or images",
                 description="Raw embeddings (not normalised, `normalized: false`), as the model's encode_text / "
                             "encode_image give them.")
    async def embed(request: Request) -> dict:
        fields = embed_fields(await read_request(request, limit, config.request_timeout_s), config)
        if fields["texts"]:
            return await engine.embed_texts(fields["texts"], fields["model"])
        return await engine.embed_images(fields["images"], fields["model"])

    return router
