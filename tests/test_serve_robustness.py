"""`zeroshift serve` under stress: every bad input gets a clear 4xx, body limits, batching of concurrent
requests, back-pressure, and property tests (hypothesis, schemathesis), on two tiny-clip models."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import (
    LABELS,
    NAMES,
    assert_error,
    assert_healthy,
    b64,
    make_app,
    png,
    png_header,
    slow_counting,
    tiny_models,
)


@pytest.fixture(scope="module")
def models() -> dict:
    return tiny_models()


# ---------------------------------------------------------------- bad input


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"zsB0undary", close: bool = True) -> bytes:
    """A multipart body from (Content-Disposition header value, data) pairs."""
    out = b""
    for disposition, data in parts:
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"
    return out + (b"--" + boundary + b"--\r\n" if close else b"")


FORM = "multipart/form-data; boundary=zsB0undary"
GOOD_IMAGE = (b'form-data; name="image"; filename="a.png"', png())


def _bad_requests():
    """(id, endpoint, body kwargs, status, message fragment)."""
    img = [{"data": b64(png())}]
    truncated = png(5, (64, 64))
    truncated = truncated[: len(truncated) // 2]
    raw = lambda body, ctype=FORM: {"content": body, "headers": {"content-type": ctype}}
    return [
        ("oversized upload", "classify", raw(_multipart([(GOOD_IMAGE[0], png(6, (400, 400))),
                                                         (b'form-data; name="labels"', b"a,b")])), 413, "body"),
        ("too many images form", "classify", raw(_multipart([GOOD_IMAGE] * 4 + [(b'form-data; name="labels"', b"a")])),
         413, "images"),
        ("too many images json", "classify", {"json": {"images": img * 4, "labels": "a"}}, 413, "images"),
        ("too many labels", "classify", {"json": {"images": img, "labels": "a,b,c,d,e,f"}}, 413, "labels"),
        ("too many texts", "embed", {"json": {"texts": list("abcdef")}}, 413, "texts"),
        ("not an image", "classify", {"json": {"images": [{"data": b64(b"hello, world")}], "labels": "a"}}, 400,
         "not an image"),
        ("empty image", "classify", raw(_multipart([(b'form-data; name="image"; filename="e.png"', b""),
                                                    (b'form-data; name="labels"', b"a")])), 400, "empty"),
        ("truncated image", "classify", {"json": {"images": [{"name": "t.png", "data": b64(truncated)}],
                                                  "labels": "a"}}, 400, "t.png"),
        ("bomb past Pillow's limit", "classify", {"json": {"images": [{"data": b64(png_header(20000, 20000))}],
                                                           "labels": "a"}}, 413, "decompression"),
        ("image over max_pixels", "embed", {"json": {"images": [{"data": b64(png_header(1200, 1000))}]}}, 413,
         "pixels"),
        ("no labels", "classify", {"json": {"images": img}}, 400, "no labels"),
        ("empty labels", "classify", {"json": {"images": img, "labels": " , ,"}}, 400, "no labels"),
        ("blank label", "classify", {"json": {"images": img, "labels": ["a", " "]}}, 400, "empty"),
        ("duplicate labels", "classify", {"json": {"images": img, "labels": "cat,Cat"}}, 400, "duplicate"),
        ("label not a string", "classify", {"json": {"images": img, "labels": ["a", 3]}}, 400, "strings"),
        ("template without {c}", "classify", {"json": {"images": img, "labels": "a", "templates": ["a photo"]}},
         400, "{c}"),
        ("template with other braces", "classify", {"json": {"images": img, "labels": "a",
                                                             "templates": "a {c} {c.__class__}"}}, 400, "braces"),
        ("non-UTF-8 labels field", "classify", raw(_multipart([GOOD_IMAGE, (b'form-data; name="labels"',
                                                                            b"caf\xe9,th\xff")])), 400, "utf-8"),
        ("non-UTF-8 JSON", "classify", raw(b'{"labels": "caf\xe9", "images": []}', "application/json"), 400,
         "utf-8"),
        ("malformed JSON", "classify", raw(b'{"labels": "a", ', "application/json"), 400, "malformed json"),
        ("JSON not an object", "embed", raw(b'["a"]', "application/json"), 400, "object"),
        ("deeply nested JSON", "embed", raw(b"[" * 100000 + b"]" * 100000, "application/json"), 400, "json"),
        ("multipart without boundary", "classify", raw(_multipart([GOOD_IMAGE]), "multipart/form-data"), 400,
         "boundary"),
        ("multipart garbage", "classify", raw(b"\x00\x01garbage" * 50), 400, "multipart"),
        ("multipart cut short", "classify", raw(_multipart([GOOD_IMAGE], close=False)[:-40]), 400, "multipart"),
        ("multipart part without name", "classify", raw(_multipart([(b"form-data", b"x")])), 400, "name"),
        ("labels given twice", "classify", raw(_multipart([GOOD_IMAGE, (b'form-data; name="labels"', b"a"),
                                                          (b'form-data; name="labels"', b"b")])), 400, "once"),
        ("unknown form field", "classify", raw(_multipart([GOOD_IMAGE, (b'form-data; name="lables"', b"a")])), 400,
         "unknown form field"),
        ("unknown JSON field", "classify", {"json": {"images": img, "labels": "a", "label": "b"}}, 400,
         "unknown field"),
        ("bad base64", "classify", {"json": {"images": [{"data": "iVBORw0K$$$"}], "labels": "a"}}, 400, "base64"),
        ("bad data URL", "classify", {"json": {"images": [{"data": "data:image/png," + b64(png())}], "labels": "a"}},
         400, "base64"),
        ("image not an object", "classify", {"json": {"images": ["abc"], "labels": "a"}}, 400, "object"),
        ("unknown model", "classify", {"json": {"images": img, "labels": "a", "model": "openclip:ViT-B-32"}}, 400,
         "not served"),
        ("wrong content type", "classify", raw(b"labels=a", "application/x-www-form-urlencoded"), 415, "multipart"),
        ("no content type", "embed", {"content": b'{"texts": ["a"]}'}, 415, "json"),
        ("bad content length", "embed", {"content": b"{}", "headers": {"content-type": "application/json",
                                                                        "content-length": "zz"}}, 400, "length"),
    ]


BAD = _bad_requests()


@pytest.fixture(scope="module")
def strict_client(models):
    app = make_app(models, max_upload_mb=0.25, max_images=3, max_labels=5, max_pixels=1_000_000)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(("endpoint", "kwargs", "status", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_4xx_and_the_service_stays_healthy(strict_client, endpoint, kwargs, status, fragment):
    assert_error(strict_client.post(f"/v1/{endpoint}", **kwargs), status, fragment)
    assert_healthy(strict_client)
    r = strict_client.post("/v1/classify", json={"images": [{"data": b64(png())}], "labels": "a,b"})
    assert r.status_code == 200 and strict_client.get("/healthz").json()["inflight"] == 0


def _asgi_post(app, path: str, headers: dict, chunks: list[bytes]) -> tuple[int, dict, int]:
    """POST straight to the ASGI app, the body in chunks; (status, JSON, chunks the app pulled)."""
    pulled = 0

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def test_body_limit_is_enforced_while_reading(models):
    app = make_app(models, max_upload_mb=0.25)
    chunks = [b"x" * 100_000] * 20  # 2 MB, streamed without a Content-Length
    status, body, pulled = _asgi_post(app, "/v1/classify", {"content-type": FORM}, chunks)
    assert status == 413 and "at most 262144" in body["error"]
    assert pulled == 3  # stopped at the first chunk past the limit
    status, body, pulled = _asgi_post(app, "/v1/embed", {"content-type": "application/json",
                                                         "content-length": str(10**9)}, chunks)
    assert status == 413 and pulled == 0  # refused on the declared length alone


# ---------------------------------------------------------------- concurrency


def _async_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_concurrent_requests_are_batched_and_equal_unbatched():
    batched_models, calls = tiny_models(), []
    slow_counting(batched_models[NAMES[0]], 0.05, calls)
    batched = make_app(batched_models, batch_window_ms=100)
    alone = make_app(tiny_models(), batch_window_ms=0)
    bodies = [{"images": [{"name": f"i{i}", "data": b64(png(10 + i))}], "labels": LABELS} for i in range(8)]

    async def run():
        async with _async_client(batched) as client:
            together = await asyncio.gather(*(client.post("/v1/classify", json=b) for b in bodies))
        async with _async_client(alone) as client:
            one_by_one = [await client.post("/v1/classify", json=b) for b in bodies]
        return together, one_by_one

    together, one_by_one = asyncio.run(run())
    assert sum(calls) == 8 and len(calls) < 8, calls  # 8 single-image requests in fewer encode_image calls
    assert batched.state.engine.served[NAMES[0]].batcher.calls == len(calls)
    assert alone.state.engine.served[NAMES[0]].batcher.calls == 8
    for a, b in zip(together, one_by_one):
        assert a.status_code == b.status_code == 200
        for ma, mb in zip(a.json()["results"][0]["models"], b.json()["results"][0]["models"]):
            assert [x["label"] for x in ma["ranking"]] == [x["label"] for x in mb["ranking"]]
            np.testing.assert_allclose([x["prob"] for x in ma["ranking"]], [x["prob"] for x in mb["ranking"]],
                                       atol=1e-5)


def test_healthz_answers_while_a_slow_classify_runs():
    slow, calls, spans = tiny_models(), [], []
    slow_counting(slow[NAMES[0]], 0.8, calls, spans)
    app = make_app(slow)

    async def run():
        async with _async_client(app) as client:
            task = asyncio.create_task(client.post("/v1/classify", json={
                "images": [{"data": b64(png())}], "labels": "a,b"}))
            while not calls:
                await asyncio.sleep(0.01)
            health = await client.get("/healthz")
            answered = time.perf_counter()
            listed = await client.get("/v1/models")
            return health, answered, listed, await task

    health, answered, listed, slow_response = asyncio.run(run())
    (start, end), = spans
    assert start < answered < end - 0.3  # answered while the model was busy, not after
    assert health.json() == {"status": "ok", "models": 2, "inflight": 1}
    assert listed.status_code == 200 and slow_response.status_code == 200


def test_images_in_flight_are_bounded_with_503():
    slow, calls = tiny_models(), []
    slow_counting(slow[NAMES[0]], 0.5, calls)
    app = make_app(slow, max_inflight=2, max_images=2)
    two = {"images": [{"data": b64(png(1))}, {"data": b64(png(2))}], "labels": "a,b"}
    one = {"images": [{"data": b64(png(3))}], "labels": "a,b"}

    async def run():
        async with _async_client(app) as client:
            first = asyncio.create_task(client.post("/v1/classify", json=two))
            while (await client.get("/healthz")).json()["inflight"] < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/classify", json=one)
            first = await first
            after = await client.get("/healthz")
            retried = await client.post("/v1/classify", json=one)
            return first, refused, after, retried

    first, refused, after, retried = asyncio.run(run())
    assert_error(refused, 503, "busy")
    assert refused.headers["retry-after"] == "1"
    assert first.status_code == 200 and retried.status_code == 200
    assert after.json()["inflight"] == 0


def test_threads_share_one_client_without_errors(models):
    """Sync clients in threads (as a browser's parallel uploads) all get answers."""
    with TestClient(make_app(models)) as client:
        out = []

        def worker(i):
            out.append(client.post("/v1/classify", files=[("image", (f"{i}.png", png(i), "image/png"))],
                                   data={"labels": "a,b,c"}).status_code)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [200] * 6


# ---------------------------------------------------------------- property tests


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_fields = st.sampled_from(["images", "labels", "templates", "model", "texts", "image", "text", "name", "data"])
_image_data = st.sampled_from([b64(png()), b64(png()[:50]), "", "@@", "data:image/png;base64," + b64(png())])
_image = st.fixed_dictionaries({"data": _image_data | st.text(max_size=10)},
                               optional={"name": st.text(max_size=8) | st.integers()})
_value = _json | st.lists(_image, max_size=3) | st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=6) \
    | st.just(list(NAMES)) | st.sampled_from(NAMES)
_json_body = (st.dictionaries(_fields | st.text(max_size=6), _value, max_size=5) | _json).map(
    lambda v: json.dumps(v).encode())
_part = st.tuples(
    _fields | st.text(max_size=6),
    st.none() | st.text(max_size=8),
    st.binary(max_size=60) | st.sampled_from([png(), png()[:40], b"red,green", "caf\xe9".encode("latin-1")]),
)


@st.composite
def _form_body(draw) -> bytes:
    parts = draw(st.lists(_part, max_size=5))
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--zsB0undary\r\nContent-Disposition: " + disposition.encode("utf-8", "surrogatepass") \
            + b"\r\n\r\n" + data + b"\r\n"
    out += b"--zsB0undary--\r\n"
    cut = draw(st.integers(0, len(out)))
    return out if draw(st.booleans()) else out[:cut]


_request = st.tuples(
    st.sampled_from(["/v1/classify", "/v1/embed"]),
    st.sampled_from(["application/json", FORM, "multipart/form-data", "text/plain", "", "application/x+json"]),
    _json_body | _form_body() | st.binary(max_size=120),
)


def test_random_request_bodies_never_get_a_5xx(models):
    with TestClient(make_app(models, max_images=3, max_labels=6)) as client:
        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=_request)
        def check(request):
            path, ctype, body = request
            r = client.post(path, content=body, headers={"content-type": ctype} if ctype else {})
            assert r.status_code < 500, r.text
            if r.status_code != 200:
                assert isinstance(r.json()["error"], str)

        check()
        assert_healthy(client)
        assert client.get("/healthz").json()["inflight"] == 0


# The schema is built at import from its own two tiny models (milliseconds): schemathesis' lazy
# from_fixture loader does not run under pytest 9.
schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(tiny_models(), max_images=3, max_labels=6))


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_openapi_document_matches_behaviour(case):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
