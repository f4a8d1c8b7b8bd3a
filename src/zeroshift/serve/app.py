"""The HTTP layer of `zeroshift serve`: a FastAPI app over an Engine, with bounded, strict request parsing.

Request bodies are read by the app itself (never unbounded: the limit is enforced while reading) and
parsed here, multipart or JSON, into plain fields for the engine, so every malformed, oversized or
hostile request gets a one-line `{"error": ...}` with a 4xx status. The OpenAPI document declares both
body forms, the response models and those 4xx answers.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingBackend, ZeroshiftError
from ..models.vlm import VLM
from ..zeroshot.labels import parse_labels
from .checks import decode_base64
from .config import MAX_NAME, MAX_TEMPLATES, MAX_TEXT_CHARS, ServeConfig
from .engine import Engine
from .errors import Busy, RequestError, TooLarge, Unsupported, one_line

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from pydantic import BaseModel, Field
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - depends on the install
    raise MissingBackend(f"zeroshift serve needs {e.name}: pip install 'zeroshift[serve]'") from None

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("zeroshift.serve")
STATIC = Path(__file__).with_name("static")
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MISSING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>zeroshift</title></head><body>
<h1>zeroshift serve</h1><p>The web page is not installed (no static/index.html in this zeroshift package).
The API works: see <a href="/docs">/docs</a>, <a href="/v1/models">/v1/models</a> and
<a href="/healthz">/healthz</a>.</p></body></html>
"""


# ---------------------------------------------------------------- response models (the OpenAPI document)


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong and what to do, in one line")


class Ranked(BaseModel):
    label: str
    prob: float = Field(description="softmax over the labels of 100 x cosine similarity, as `zeroshift predict`")


class ModelRanking(BaseModel):
    model: str = Field(description="the served model, as named at start-up")
    ranking: list[Ranked] = Field(description="every label, best first")
    top1: str
    ms: float = Field(description="milliseconds this model spent on the request (queueing included)")


class ImageResult(BaseModel):
    image: str = Field(description="the file name (multipart), the given name (JSON) or image-<i>")
    models: list[ModelRanking]


class ClassifyResponse(BaseModel):
    results: list[ImageResult] = Field(description="one per image, in request order")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    normalized: bool = Field(description="always false: raw joint-space embeddings, as encode_image/encode_text "
                                         "give them; L2-normalise before taking cosines")
    embeddings: list[list[float]] = Field(description="one row per text or image, in request order")


class ModelInfo(BaseModel):
    spec: str = Field(description="the name to pass as `model`")
    kind: str = Field(description="'vlm' for a VLM scheme, the run's kind (bridge, student, aligned) for run:, "
                                  "else 'model'")
    teacher: str | None = None
    dims: dict[str, int] = Field(description="'joint' is the embedding size; runs add their recorded dims")
    parameters: int | None = None
    results: list[dict[str, Any]] = Field(description="the run's CLIP_benchmark records in results/, else []")
    card: str | None = Field(default=None, description="the run's README.md (model card), else null")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: int
    inflight: int = Field(description="images being processed now")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "malformed or invalid request (bad JSON, multipart, base64, image, labels or model)",
            413: "body, image or list beyond this server's limits",
            415: "body is neither multipart/form-data nor application/json",
            503: "too many images in flight; retry (Retry-After: 1)"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


# ---------------------------------------------------------------- request bodies


def _strings(desc: str, **extra: Any) -> dict:
    return {"anyOf": [{"type": "array", "items": {"type": "string"}, **extra}, {"type": "string"}], "description": desc}


def _request_schemas(cfg: ServeConfig) -> tuple[dict, dict]:
    """(classify, embed) requestBody objects for the OpenAPI document."""
    image = {"type": "object", "required": ["data"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "description": "shown in the results (default image-<i>)"},
        "data": {"type": "string", "contentEncoding": "base64",
                 "description": "the image file in base64 (a data: URL is accepted)"}}}
    images = {"type": "array", "items": image, "minItems": 1, "maxItems": cfg.max_images}
    labels = _strings("labels: a list, or one string split at newlines (if any) else at commas", minItems=1,
                      maxItems=cfg.max_labels)
    templates = _strings(f"prompt templates, each with {{c}} (a list or newline-separated; at most {MAX_TEMPLATES}); "
                         "absent or empty: the server's default set")
    model = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
             "description": "served model(s) to use (see /v1/models); absent: all of them"}
    classify_json = {"type": "object", "required": ["images", "labels"], "additionalProperties": False,
                     "properties": {"images": images, "labels": labels, "templates": templates, "model": model}}
    binary = {"type": "array", "items": {"type": "string", "format": "binary"}}
    classify_form = {"type": "object", "required": ["image", "labels"], "properties": {
        "image": {**binary, "description": "image files (repeat the field)"},
        "labels": {"type": "string", "description": "comma- or newline-separated labels"},
        "templates": {"type": "string", "description": "newline-separated templates, each with {c}"},
        "model": {"type": "string", "description": "a served model (repeat the field for several)"}}}
    texts = {"type": "array", "items": {"type": "string", "maxLength": MAX_TEXT_CHARS}, "minItems": 1,
             "maxItems": cfg.max_labels}
    one_model = {"type": "string", "description": "the served model (default: the first one)"}
    embed_json = {"type": "object", "additionalProperties": False,
                  "description": "either texts or images",
                  "properties": {"texts": texts, "images": images, "model": one_model}}
    embed_form = {"type": "object", "properties": {
        "image": {**binary, "description": "image files (repeat the field)"},
        "text": {"type": "array", "items": {"type": "string"}, "description": "texts (repeat the field)"},
        "model": one_model}}

    def body(json_schema: dict, form: dict) -> dict:
        return {"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": form}, "application/json": {"schema": json_schema}}}}

    return body(classify_json, classify_form), body(embed_json, embed_form)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with TooLarge as soon as it passes `limit` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > limit:
            raise TooLarge(f"request body of {int(declared)} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"request body over {limit} bytes; this server takes at most {limit}")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError("the client went away before sending the whole body") from None
    return b"".join(chunks)


@dataclass
class Part:
    """One part of a multipart body."""

    name: str
    filename: str | None
    data: bytes

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"form field {self.name!r} is not UTF-8 text") from None


class _Collector:
    """python-multipart callbacks gathering parts (in memory: the body is already bounded)."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts, self.parts, self.ended = max_parts, [], False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._data: list[bytes] = []
        self._current: Part | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_part_data": self.part_data, "on_part_end": self.part_end,
                "on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
                "on_end": self.end}

    def part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise TooLarge(f"more than {self.max_parts} form fields; send fewer images or fields")
        self._headers, self._data, self._current = {}, [], None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise RequestError("malformed multipart body: a part has no Content-Disposition header")
        _, options = parse_options_header(disposition.decode("latin-1"))
        if b"name" not in options:
            raise RequestError("malformed multipart body: a part's Content-Disposition has no name")
        try:
            name = options[b"name"].decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("malformed multipart body: a field name is not UTF-8") from None
        filename = options.get(b"filename")
        shown = filename.decode("utf-8", errors="replace").rpartition("/")[2][:MAX_NAME] if filename else None
        self._current = Part(name, shown or None, b"")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def part_end(self) -> None:
        if self._current is None:
            raise RequestError("malformed multipart body: a part ends before its headers")
        self._current.data = b"".join(self._data)
        self.parts.append(self._current)
        self._current, self._data = None, []

    def end(self) -> None:
        self.ended = True


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """The parts of a multipart/form-data body; RequestError when it is malformed or incomplete."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError("malformed multipart body: the Content-Type header has no boundary")
    collector = _Collector(max_parts)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        raise RequestError(f"malformed multipart body ({one_line(e)[:120]})") from None
    if not collector.ended:
        raise RequestError("malformed multipart body: it ends before its closing boundary")
    return collector.parts


def parse_json(body: bytes) -> dict:
    """A JSON object body; RequestError for anything else."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("the JSON body is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise RequestError(f"malformed JSON body ({one_line(e)[:120]})") from None
    if not isinstance(data, dict):
        raise RequestError(f"the JSON body must be an object, not {type(data).__name__}")
    return data


def _only(data: dict, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise RequestError(f"unknown field {unknown[0][:40]!r}; this endpoint takes {', '.join(allowed)}")


def _json_images(value: Any, limit: int) -> list[tuple[str, bytes]]:
    if not isinstance(value, list):
        raise RequestError('"images" must be a list of {"name": ..., "data": BASE64} objects')
    if len(value) > limit:
        raise TooLarge(f"{len(value)} images; this server takes at most {limit} per request")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise RequestError(f'image {i} must be an object with "data" (base64 text)')
        _only(item, ("name", "data"))
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise RequestError(f'image {i}: "name" must be a string')
        name = (name or f"image-{i}")[:MAX_NAME]
        out.append((name, decode_base64(item["data"], f"image {name!r}")))
    return out


def _string_list(value: Any, what: str, split) -> list[str] | None:
    """None for absent/empty; a string split by `split`; a list of strings as is."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return split(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise RequestError(f'"{what}" must be a string or a list of strings')


def _form_images(parts: list[Part]) -> list[tuple[str, bytes]]:
    images = [p for p in parts if p.name == "image"]
    return [((p.filename or f"image-{i}"), p.data) for i, p in enumerate(images)]


def _form_single(parts: list[Part], name: str) -> str | None:
    found = [p for p in parts if p.name == name]
    if len(found) > 1:
        raise RequestError(f"form field {name!r} is given {len(found)} times; give it once")
    return found[0].text() if found else None


def _body_kind(request: Request) -> str:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "multipart/form-data":
        return "form"
    raise Unsupported("send multipart/form-data or application/json" + (f", not {media[:60]}" if media else ""))


def classify_fields(kind: str, body: bytes, content_type: str, cfg: ServeConfig) -> dict:
    """(images, labels, templates, models) of a classify request body, checked for form."""
    if kind == "json":
        data = parse_json(body)
        _only(data, ("images", "labels", "templates", "model"))
        if "images" not in data:
            raise RequestError('no images given: add "images": [{"name": ..., "data": BASE64}, ...]')
        images = _json_images(data["images"], cfg.max_images)
        labels = _string_list(data.get("labels"), "labels", parse_labels)
        templates = _string_list(data.get("templates"), "templates", str.splitlines)
        models = _string_list(data.get("model"), "model", lambda s: [s])
    else:
        parts = parse_multipart(body, content_type, cfg.max_images + 3 + 16)
        for p in parts:
            if p.name not in ("image", "labels", "templates", "model"):
                raise RequestError(f"unknown form field {p.name[:40]!r}; this endpoint takes image, labels, "
                                   "templates and model")
        images = _form_images(parts)
        text = _form_single(parts, "labels")
        labels = parse_labels(text) if text is not None else None
        text = _form_single(parts, "templates")
        templates = text.splitlines() if text and text.strip() else None
        models = [m for m in (p.text().strip() for p in parts if p.name == "model") if m] or None
    if labels is None:
        raise RequestError("no labels given: send labels, comma- or newline-separated (e.g. 'cat,dog')")
    return {"images": images, "labels": labels, "templates": templates, "models": models}


def embed_fields(kind: str, body: bytes, content_type: str, cfg: ServeConfig) -> dict:
    """(texts or images, model) of an embed request body."""
    if kind == "json":
        data = parse_json(body)
        _only(data, ("texts", "images", "model"))
        texts, images = data.get("texts"), data.get("images")
        if texts is not None and not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise RequestError('"texts" must be a list of strings')
        images = _json_images(images, cfg.max_images) if images is not None else None
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError('"model" must be one served model name (a string)')
    else:
        parts = parse_multipart(body, content_type, cfg.max_images + cfg.max_labels + 8)
        for p in parts:
            if p.name not in ("image", "text", "model"):
                raise RequestError(f"unknown form field {p.name[:40]!r}; this endpoint takes image, text and model")
        images = _form_images(parts) or None
        texts = [p.text() for p in parts if p.name == "text"] or None
        model = _form_single(parts, "model")
    if texts and images:
        raise RequestError("give texts or images to embed, not both")
    if not texts and not images:
        raise RequestError('nothing to embed: send "texts": [...] or images')
    return {"texts": texts, "images": images, "model": model or None}


# ---------------------------------------------------------------- the app


def create_app(config: ServeConfig, models: Mapping[str, VLM] | None = None,
               static_dir: str | Path | None = None) -> FastAPI:
    """The service: loads `config.models` once (taking any given in `models`, spec -> VLM, as loaded),
    and serves the API under /v1, /healthz, and the web page in `static_dir` (the packaged one by default)."""
    engine = Engine(config, models)
    static = Path(static_dir) if static_dir is not None else STATIC
    limit = int(config.max_upload_mb * 1024 * 1024)
    classify_body, embed_body = _request_schemas(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.stop()

    app = FastAPI(title="zeroshift", version=_version(), lifespan=lifespan,
                  description="Zero-shot image classification with free-text labels over the models this server "
                              "was started with. Errors are `{\"error\": \"one line\"}` with a 4xx status.")
    app.state.engine = engine

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if isinstance(exc, Busy) else None
        return JSONResponse({"error": one_line(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        text = {404: f"no such page: {request.url.path[:100]}",
                405: f"{request.method} is not allowed on {request.url.path[:100]}"}.get(exc.status_code, str(exc.detail))
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

    @app.get("/", include_in_schema=False)
    async def index() -> Any:
        page = static / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})
        return HTMLResponse(_MISSING_PAGE)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> FileResponse:
        path = static / name
        if not _STATIC_NAME.fullmatch(name) or not path.is_file() or path.resolve().parent != static.resolve():
            raise HTTPException(404)
        return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", response_model=Health, summary="liveness: answers while models work")
    async def healthz() -> dict:
        return {"status": "ok", "models": len(engine.served), "inflight": engine.inflight}

    @app.get("/v1/models", response_model=ModelsResponse, summary="the models this server serves")
    async def list_models() -> dict:
        return {"models": [s.info for s in engine.served.values()]}

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=_errors(400, 413, 415, 503),
              openapi_extra=classify_body, summary="rank free-text labels for each image",
              description="multipart/form-data (repeated `image` files, `labels`, optional `templates`, `model`) "
                          "or JSON with base64 images. Probabilities are those `zeroshift predict` gives.")
    async def classify(request: Request) -> dict:
        kind = _body_kind(request)
        body = await read_body(request, limit)
        fields = classify_fields(kind, body, request.headers.get("content-type", ""), config)
        return {"results": await engine.classify(**fields)}

    @app.post("/v1/embed", response_model=EmbedResponse, responses=_errors(400, 413, 415, 503),
              openapi_extra=embed_body, summary="joint-space embeddings of texts or images",
              description="Raw embeddings (not normalised, `normalized: false`), as the model's encode_text / "
                          "encode_image give them.")
    async def embed(request: Request) -> dict:
        kind = _body_kind(request)
        body = await read_body(request, limit)
        fields = embed_fields(kind, body, request.headers.get("content-type", ""), config)
        if fields["texts"]:
            return await engine.embed_texts(fields["texts"], fields["model"])
        return await engine.embed_images(fields["images"], fields["model"])

    return app


def _version() -> str:
    from ..version import __version__

    return __version__
