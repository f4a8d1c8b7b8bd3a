"""Request bodies of /v1/classify and /v1/embed: read within the upload limit, parsed (multipart or
JSON) into the plain fields the engine takes. Every malformed, oversized or hostile body is a one-line
RequestError with a 4xx status."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ..zeroshot.labels import parse_labels
from .checks import NO_LABELS, check_count, decode_base64
from .config import MAX_NAME, ServeConfig
from .errors import RequestError, RequestTimeout, TooLarge, Unsupported, one_line
from .multipart import Part, parse_multipart


@dataclass(frozen=True)
class Body:
    """A request body as read: its kind ('json' or 'form'), bytes and Content-Type header."""

    kind: str
    data: bytes
    content_type: str


async def read_request(request: Request, limit: int, timeout: float) -> Body:
    """The body of a POST: its kind from Content-Type first (Unsupported, 415, before reading any of
    it), then its bytes, at most `limit`, all within `timeout` seconds (RequestTimeout, 408, beyond)."""
    kind = body_kind(request)
    try:
        async with asyncio.timeout(timeout):  # a whole-body deadline: a trickle of bytes never resets it
            data = await read_body(request, limit)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s (--request-timeout-s); "
                             "send it at once, or ask for a longer timeout") from None
    return Body(kind, data, request.headers.get("content-type", ""))


def body_kind(request: Request) -> str:
    """'json' or 'form' from the Content-Type header; Unsupported for any other media type."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "multipart/form-data":
        return "form"
    raise Unsupported("send multipart/form-data or application/json" + (f", not {media[:60]}" if media else ""))


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


def classify_fields(body: Body, cfg: ServeConfig) -> dict:
    """(images, labels, templates, models) of a classify request body, checked for form."""
    if body.kind == "json":
        data = parse_json(body.data)
        _only(data, ("images", "labels", "templates", "model"))
        if "images" not in data:
            raise RequestError('no images given: add "images": [{"name": ..., "data": BASE64}, ...]')
        images = _json_images(data["images"], cfg.max_images)
        labels = _string_list(data.get("labels"), "labels", parse_labels)
        templates = _string_list(data.get("templates"), "templates", str.splitlines)
        models = _string_list(data.get("model"), "model", lambda s: [s])
    else:
        parts = parse_multipart(body.data, body.content_type, cfg.max_images + 3 + 16)
        _form_only(parts, ("image", "labels", "templates", "model"))
        images = _form_images(parts)
        text = _form_single(parts, "labels")
        labels = parse_labels(text) if text is not None else None
        text = _form_single(parts, "templates")
        templates = text.splitlines() if text and text.strip() else None
        models = [m for m in (p.text().strip() for p in parts if p.name == "model") if m] or None
    if labels is None:
        raise RequestError(NO_LABELS)
    return {"images": images, "labels": labels, "templates": templates, "models": models}


def embed_fields(body: Body, cfg: ServeConfig) -> dict:
    """(texts or images, model) of an embed request body."""
    if body.kind == "json":
        data = parse_json(body.data)
        _only(data, ("texts", "images", "model"))
        texts, images = data.get("texts"), data.get("images")
        if texts is not None and not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise RequestError('"texts" must be a list of strings')
        images = _json_images(images, cfg.max_images) if images is not None else None
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError('"model" must be one served model name (a string)')
    else:
        parts = parse_multipart(body.data, body.content_type, cfg.max_images + cfg.max_labels + 8)
        _form_only(parts, ("image", "text", "model"))
        images = _form_images(parts) or None
        texts = [p.text() for p in parts if p.name == "text"] or None
        model = _form_single(parts, "model")
    if texts and images:
        raise RequestError("give texts or images to embed, not both")
    if not texts and not images:
        raise RequestError('nothing to embed: send "texts": [...] or images')
    return {"texts": texts, "images": images, "model": model or None}


def _only(data: dict, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise RequestError(f"unknown field {unknown[0][:40]!r}; this endpoint takes {', '.join(allowed)}")


def _form_only(parts: list[Part], allowed: tuple[str, ...]) -> None:
    for p in parts:
        if p.name not in allowed:
            raise RequestError(f"unknown form field {p.name[:40]!r}; this endpoint takes {', '.join(allowed[:-1])} "
                               f"and {allowed[-1]}")


def _json_images(value: Any, limit: int) -> list[tuple[str, bytes]]:
    if not isinstance(value, list):
        raise RequestError('"images" must be a list of {"name": ..., "data": BASE64} objects')
    check_count(value, "images", limit)
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


def _string_list(value: Any, what: str, split: Callable[[str], list[str]]) -> list[str] | None:
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
