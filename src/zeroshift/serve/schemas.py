"""The OpenAPI document of the service: pydantic response models, the 4xx answers, the two body forms."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .config import MAX_TEMPLATES, MAX_TEXT_CHARS, ServeConfig


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


class Parameters(BaseModel):
    image: int | None = Field(description="parameters of the image path (tower and head), run once per image: "
                                           "the per-image cost")
    text: int | None = Field(description="parameters of the text side, run once per label set (label embeddings "
                                          "are cached): a bridged or distilled model's is its teacher's text tower")


class ModelInfo(BaseModel):
    spec: str = Field(description="the name to pass as `model`")
    kind: str = Field(description="'vlm' for a VLM scheme, the run's kind (bridge, student, aligned) for run:, "
                                  "else 'model'")
    teacher: str | None = None
    dims: dict[str, int] = Field(description="'joint' is the embedding size; runs add their recorded dims")
    parameters: Parameters | None = Field(default=None, description=(
        "parameter counts per side (earlier versions gave one total here, which counted a bridged or distilled "
        "model's unused teacher image tower); null for a model that does not name its sides"))
    results: list[dict[str, Any]] = Field(description="the run's CLIP_benchmark records in results/, else []")
    card: str | None = Field(default=None, description="the run's README.md (model card), else null")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: int
    inflight: int = Field(description="images being processed now")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries of a route for its 4xx/5xx `codes`: an ErrorBody with what each means."""
    what = {400: "malformed or invalid request (bad JSON, multipart, base64, image, labels or model)",
            408: "the body did not arrive within the server's --request-timeout-s; the connection is closed",
            413: "body, image or list beyond this server's limits",
            415: "body is neither multipart/form-data nor application/json",
            503: "too many images in flight; retry (Retry-After: 1)"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


def _strings(desc: str, **extra: Any) -> dict:
    return {"anyOf": [{"type": "array", "items": {"type": "string"}, **extra}, {"type": "string"}], "description": desc}


def request_schemas(cfg: ServeConfig) -> tuple[dict, dict]:
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
