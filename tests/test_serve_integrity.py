"""`zeroshift serve` integrity (issue 17): odd code points in text fields are one-line 400s naming the
field."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zeroshift.models.tiny import create
from zeroshift.serve.app import create_app
from zeroshift.serve.config import ServeConfig

NAME = "tiny-clip:seed=0"
FORM = "multipart/form-data; boundary=zsB0undary"


@pytest.fixture(scope="module")
def models() -> dict:
    return {NAME: create("seed=0")}


def make_app(models: dict, **options):
    return create_app(ServeConfig(models=tuple(models), runtime="torch", **options), models=models)


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


IMAGE = base64.b64encode(png()).decode()


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart body from (Content-Disposition value, data) pairs."""
    out = b""
    for disposition, data in parts:
        out += b"--zsB0undary\r\nContent-Disposition: " + disposition.encode("utf-8") + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--zsB0undary--\r\n"


def raw_json(text: str) -> dict:
    """A JSON body as written (so `\\ud800` escapes reach the server as such)."""
    return {"content": text.encode("ascii"), "headers": {"content-type": "application/json"}}


def raw_form(body: bytes) -> dict:
    return {"content": body, "headers": {"content-type": FORM}}


IMG = '[{"data": "%s"}]' % IMAGE
GOOD_IMAGE = ('form-data; name="image"; filename="a.png"', png())

# (id, endpoint, request kwargs, what the message names, the text as it shows it: escaped)
ODD = [
    ("lone surrogate in a JSON label", "classify", raw_json('{"images": %s, "labels": ["cat", "d\\ud800g"]}' % IMG),
     "label 1", r"'d\ud800g'"),
    ("low surrogate in a JSON label string", "classify", raw_json('{"images": %s, "labels": "cat,\\udfffdog"}' % IMG),
     "label 1", r"'\udfffdog'"),
    ("NUL in a JSON label", "classify", raw_json('{"images": %s, "labels": ["c\\u0000t", "dog"]}' % IMG),
     "label 0", r"'c\x00t'"),
    ("escape in a label", "classify", raw_json('{"images": %s, "labels": ["cat", "\\u001b[31mdog"]}' % IMG),
     "label 1", r"'\x1b[31mdog'"),
    ("line separator in a label", "classify", raw_json('{"images": %s, "labels": ["cat", "d\\u2028og"]}' % IMG),
     "label 1", r"'d\u2028og'"),
    ("C1 control in a label", "classify", raw_json('{"images": %s, "labels": ["cat", "d\\u0085og"]}' % IMG),
     "label 1", r"'d\x85og'"),
    ("NUL in a multipart labels field", "classify",
     raw_form(multipart(GOOD_IMAGE, ('form-data; name="labels"', b"cat,d\x00g"))), "label 1", r"'d\x00g'"),
    ("lone surrogate in a JSON image name", "classify",
     raw_json('{"images": [{"name": "x\\udc80.png", "data": "%s"}], "labels": "cat,dog"}' % IMAGE),
     "image 0's name", r"'x\udc80.png'"),
    ("control character in a multipart file name", "classify",
     raw_form(multipart(('form-data; name="image"; filename="a\x07.png"', png()),
                        ('form-data; name="labels"', b"cat,dog"))), "image 0's name", r"'a\x07.png'"),
    ("lone surrogate in a JSON template", "classify",
     raw_json('{"images": %s, "labels": "cat,dog", "templates": ["a {c}", "\\ud83d {c}"]}' % IMG),
     "template 1", r"'\ud83d {c}'"),
    ("NUL in a multipart template", "classify",
     raw_form(multipart(GOOD_IMAGE, ('form-data; name="labels"', b"cat,dog"),
                        ('form-data; name="templates"', b"a {c}\x00"))), "template 0", r"'a {c}\x00'"),
    ("lone surrogate in a text to embed", "embed", raw_json('{"texts": ["ok", "a \\udbff"]}'), "text 1",
     r"'a \udbff'"),
    ("NUL in a text to embed", "embed", raw_json('{"texts": ["a\\u0000b"]}'), "text 0", r"'a\x00b'"),
    ("bell in a multipart text to embed", "embed", raw_form(multipart(('form-data; name="text"', b"ding\x07"))),
     "text 0", r"'ding\x07'"),
    ("lone surrogate in a JSON image name to embed", "embed",
     raw_json('{"images": [{"name": "\\ud800", "data": "%s"}]}' % IMAGE), "image 0's name", r"'\ud800'"),
]


@pytest.fixture(scope="module")
def client(models):
    with TestClient(make_app(models), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("endpoint", "kwargs", "what", "escaped"), [o[1:] for o in ODD], ids=[o[0] for o in ODD])
def test_odd_code_points_are_a_400_naming_the_field(client, endpoint, kwargs, what, escaped):
    r = client.post(f"/v1/{endpoint}", **kwargs)
    assert r.status_code == 400, (r.status_code, r.text)
    error = json.loads(r.content.decode("utf-8"))["error"]  # strict UTF-8 and JSON
    assert error.startswith(f"{what} {escaped} holds U+") and "\n" not in error, error
    assert error.isprintable() and any(k in error for k in ("control character", "surrogate", "separator")), error
    assert client.get("/healthz").json()["inflight"] == 0


@pytest.mark.parametrize("body", [
    {"images": [{"data": IMAGE, "name": "caf\u00e9 \U0001f431.png"}],
     "labels": ["\U0001f469\u200d\U0001f52c", "dog\n"]},
    {"images": [{"data": IMAGE}], "labels": "cat,dog", "templates": ["\u00e0 {c}\t"]},  # stripped, as used
], ids=["emoji, ZWJ, accents, a trailing newline", "template with trailing tab"])
def test_plain_text_still_passes(client, body):
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["image"] == body["images"][0].get("name", "image-0")
    r = client.post("/v1/embed", json={"texts": ["line one\nline two\r\n\ttabbed\u2028"]})  # a passage has lines
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text


def test_odd_page_paths_are_shown_escaped(client):
    r = client.get("/static/a%00b%1bc")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error == "no such page: '/static/a\\x00b\\x1bc'", error
