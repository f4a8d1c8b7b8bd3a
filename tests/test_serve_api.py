"""`zeroshift serve`: every endpoint, every bad input, batching, the label cache, back-pressure, the CLI,
and property tests (hypothesis, schemathesis) on two tiny-clip models."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zeroshift.cli.main import main
from zeroshift.models.tiny import create
from zeroshift.ranking import predict
from zeroshift.serve.app import create_app
from zeroshift.serve.config import ServeConfig, bind_warning

NAMES = ("tiny-clip:seed=0", "tiny-clip:seed=1")
LABELS = ["red", "green", "blue", "a yellow banana"]


def tiny_models() -> dict:
    return {name: create(name.partition(":")[2]) for name in NAMES}


@pytest.fixture(scope="module")
def models() -> dict:
    return tiny_models()


def make_app(models: dict, **options):
    return create_app(ServeConfig(models=tuple(models), runtime="torch", **options), models=models)


def png(seed: int = 0, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(seed, (48, 36)))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_healthy(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text


def assert_error(r, status: int, fragment: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error
    assert fragment.lower() in error.lower(), error


def slow_counting(vlm, delay: float, calls: list, spans: list | None = None) -> None:
    """Make `vlm.encode_image` record each batch size (and its (start, end) times) and sleep `delay` s."""
    inner = vlm.encode_image

    def encode_image(images):
        calls.append(len(images))
        start = time.perf_counter()
        time.sleep(delay)
        out = inner(images)
        if spans is not None:
            spans.append((start, time.perf_counter()))
        return out

    vlm.encode_image = encode_image


# ---------------------------------------------------------------- endpoints


def test_health_models_openapi_and_page(models, tmp_path):
    with TestClient(make_app(models)) as client:
        assert client.get("/healthz").json() == {"status": "ok", "models": 2, "inflight": 0}
        listed = client.get("/v1/models").json()["models"]
        assert [m["spec"] for m in listed] == list(NAMES)
        vlm = models[NAMES[0]]
        params = {"image": sum(p.numel() for p in vlm.image.parameters()),
                  "text": sum(p.numel() for p in vlm.text.parameters())}
        assert listed[0] == {"spec": NAMES[0], "kind": "vlm", "teacher": None, "dims": {"joint": 32},
                             "parameters": params, "results": [], "card": None}
        doc = client.get("/openapi.json").json()
        for path in ("/v1/classify", "/v1/embed"):
            op = doc["paths"][path]["post"]
            assert {"400", "413", "415", "503"} <= set(op["responses"]), path
            assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
        assert "normalised" in doc["paths"]["/v1/embed"]["post"]["description"]
        assert set(doc["paths"]) == {"/healthz", "/v1/models", "/v1/classify", "/v1/embed"}
        assert_error(client.get("/v2/nothing"), 404, "no such page")
        assert_error(client.delete("/v1/classify"), 405, "not allowed")
        assert_error(client.get("/v1/classify"), 405)

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<html>zeroshift page</html>")
    (static / "app.js").write_text("console.log('hi');")
    (tmp_path / "secret.txt").write_text("no")
    with TestClient(create_app(ServeConfig(models=NAMES, runtime="torch"), models, static_dir=static)) as client:
        assert "zeroshift page" in client.get("/").text
        r = client.get("/static/app.js")
        assert r.status_code == 200 and "console.log" in r.text and "javascript" in r.headers["content-type"]
        for bad in ("/static/../secret.txt", "/static/%2e%2e%2fsecret.txt", "/static/.hidden", "/static/nope.css"):
            assert client.get(bad).status_code == 404, bad
    with TestClient(create_app(ServeConfig(models=NAMES), models, static_dir=tmp_path / "absent")) as client:
        r = client.get("/")
        assert r.status_code == 200 and "not installed" in r.text
        assert client.get("/static/app.js").status_code == 404


def test_models_lists_a_run_with_its_records_and_card(tmp_path):
    import torch

    from zeroshift.runfolder import RunWriter
    from zeroshift.zeroshot.records import make_record, write_record

    with RunWriter(tmp_path / "bridge") as writer:
        folder = writer.finish({"kind": "bridge", "teacher": "tiny-clip:seed=0", "dims": {"teacher": 32}},
                               {"w": torch.zeros(32, 4)}, "# a tiny bridge\n")
    write_record(make_record("tuxpaint", f"run:{folder}", "zeroshot_classification", {"acc1": 0.5}),
                 folder / "results")
    name = f"run:{folder}"
    app = create_app(ServeConfig(models=(name,), runtime="torch"), models={name: create("seed=0")})
    with TestClient(app) as client:
        (info,) = client.get("/v1/models").json()["models"]
        assert info["spec"] == name and info["kind"] == "bridge" and info["teacher"] == "tiny-clip:seed=0"
        assert info["dims"] == {"joint": 32, "teacher": 32} and info["card"].startswith("# a tiny bridge")
        assert [(r["dataset"], r["task"], r["metrics"]) for r in info["results"]] == [
            ("tuxpaint", "zeroshot_classification", {"acc1": 0.5})]
        r = client.post("/v1/classify", json={"images": [{"data": b64(png())}], "labels": "a,b", "model": name})
        assert r.json()["results"][0]["models"][0]["model"] == name


def test_classify_equals_predict(models, tmp_path):
    images = {"a.png": png(1), "b.jpg": jpeg(2), "c.png": png(3, (17, 61))}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\nart of the {c}.\n")
    with TestClient(make_app(models)) as client:
        form = client.post("/v1/classify", files=[("image", (n, d, "image/png")) for n, d in images.items()],
                           data={"labels": "\n".join(LABELS)})
        as_json = client.post("/v1/classify", json={"images": [{"name": n, "data": b64(d)} for n, d in images.items()],
                                                     "labels": ",".join(LABELS)})
        templated = client.post("/v1/classify", json={
            "images": [{"name": n, "data": b64(d)} for n, d in images.items()], "labels": LABELS,
            "templates": ["a photo of a {c}.", "art of the {c}."], "model": NAMES[1]})
    assert form.status_code == as_json.status_code == templated.status_code == 200, form.text
    for response, templates, names in ((form, None, NAMES), (as_json, None, NAMES),
                                       (templated, str(tmp_path / "templates.txt"), NAMES[1:])):
        results = response.json()["results"]
        assert [r["image"] for r in results] == list(images)
        for k, name in enumerate(names):
            expected = predict(models[name], [tmp_path / n for n in images], LABELS, templates=templates)
            for got, want in zip(results, expected):
                served = got["models"][k]
                assert served["model"] == name and served["ms"] >= 0
                assert [x["label"] for x in served["ranking"]] == [x["label"] for x in want["ranking"]]
                assert served["top1"] == want["ranking"][0]["label"]
                np.testing.assert_allclose([x["prob"] for x in served["ranking"]],
                                           [x["prob"] for x in want["ranking"]], atol=1e-5)
            assert len(results[0]["models"]) == len(names)


def test_model_choice_by_name_or_canonical_spec(models):
    with TestClient(make_app(models)) as client:
        data = {"images": [{"data": b64(png())}], "labels": "cat,dog"}
        r = client.post("/v1/classify", json={**data, "model": "tiny-clip:seed=1,dim=32,size=32"}).json()
        assert r["results"][0]["image"] == "image-0"
        assert [m["model"] for m in r["results"][0]["models"]] == [NAMES[1]]
        r = client.post("/v1/classify", files=[("image", ("x.png", png(), "image/png"))],
                        data={"labels": "cat,dog", "model": [NAMES[1], NAMES[0]]}).json()
        assert [m["model"] for m in r["results"][0]["models"]] == [NAMES[1], NAMES[0]]


def test_embed_gives_raw_joint_space_vectors(models):
    vlm = models[NAMES[1]]
    with TestClient(make_app(models)) as client:
        r = client.post("/v1/embed", json={"texts": ["a red square", "a dog"], "model": NAMES[1]})
        assert r.status_code == 200
        body = r.json()
        assert body["model"] == NAMES[1] and body["dim"] == 32 and body["normalized"] is False
        np.testing.assert_allclose(body["embeddings"], vlm.encode_text(["a red square", "a dog"]).numpy(), atol=1e-6)
        r = client.post("/v1/embed", files=[("image", ("a.png", png(4), "image/png"))])
        assert r.status_code == 200 and r.json()["model"] == NAMES[0]
        first = models[NAMES[0]]
        want = first.encode_image(first.image_transform(Image.open(io.BytesIO(png(4))).convert("RGB"))[None])
        np.testing.assert_allclose(r.json()["embeddings"], want.numpy(), atol=1e-5)
        r = client.post("/v1/embed", files=[("text", (None, "a cat")), ("text", (None, "a dog"))])
        assert r.status_code == 200 and len(r.json()["embeddings"]) == 2
        assert_error(client.post("/v1/embed", json={"texts": ["a"], "images": [{"data": b64(png())}]}), 400, "not both")
        assert_error(client.post("/v1/embed", json={}), 400, "nothing to embed")
        assert_error(client.post("/v1/embed", json={"texts": ["a", ""]}), 400, "empty")
        assert_error(client.post("/v1/embed", json={"texts": ["a"], "model": [NAMES[0]]}), 400, "one served model")
        assert_healthy(client)


def test_label_embeddings_are_cached():
    models = tiny_models()
    calls = {name: 0 for name in NAMES}
    for name, vlm in models.items():
        def counting(texts, inner=vlm.encode_text, name=name):
            calls[name] += 1
            return inner(texts)
        vlm.encode_text = counting
    with TestClient(make_app(models)) as client:
        def classify(labels, templates=None):
            body = {"images": [{"data": b64(png())}], "labels": labels, "templates": templates}
            r = client.post("/v1/classify", json=body)
            assert r.status_code == 200, r.text
            return [[m["ranking"] for m in result["models"]] for result in r.json()["results"]]

        first = classify("cat,dog,bird")
        assert calls == {NAMES[0]: 1, NAMES[1]: 1}
        assert classify("cat, dog ,bird") == first  # same labels once stripped: no text encoding at all
        assert classify(["cat", "dog", "bird"]) == first
        assert calls == {NAMES[0]: 1, NAMES[1]: 1}
        classify("dog,cat,bird")  # another order is another classifier
        classify("cat,dog,bird", ["a drawing of a {c}"])  # other templates too
        assert calls == {NAMES[0]: 3, NAMES[1]: 3}
        assert len(client.app.state.engine.labels) == 6


def test_unserved_model_is_never_loaded(models, monkeypatch):
    import zeroshift.specs

    loaded = []
    monkeypatch.setattr(zeroshift.specs, "load", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(zeroshift.specs, "build", lambda *a, **k: loaded.append(a))
    with TestClient(make_app(models)) as client:
        for model in ("onnx:/some/path", "run:../..", "tiny-clip:seed=2", "TINY-CLIP:seed=0", "../../etc"):
            body = {"images": [{"data": b64(png())}], "labels": "a,b", "model": [model]}
            assert_error(client.post("/v1/classify", json=body), 400, "not served")
            r = client.post("/v1/classify", files=[("image", ("a.png", png(), "image/png"))],
                            data={"labels": "a,b", "model": model})
            assert_error(r, 400, "not served")
            assert_error(client.post("/v1/embed", json={"texts": ["a"], "model": model}), 400, "not served")
        assert_error(client.post("/v1/classify", json={"images": [{"data": b64(png())}], "labels": "a",
                                                        "model": {"spec": "run:x"}}), 400)
        assert_healthy(client)
    assert loaded == []


# ---------------------------------------------------------------- hostile and malformed input


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


# ---------------------------------------------------------------- the command


def test_serve_command(monkeypatch, capsys):
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append((app, kw)))
    assert main(["serve", "--model", NAMES[0], "--model", NAMES[1], "--runtime", "torch", "--port", "8123"]) == 0
    app, kw = ran[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert list(app.state.engine.served) == list(NAMES)
    assert "warning" not in capsys.readouterr().err
    assert main(["serve", "--model", NAMES[0], "--host", "0.0.0.0", "--runtime", "torch"]) == 0
    assert ran[-1][1]["host"] == "0.0.0.0"
    assert "warning: binding 0.0.0.0" in capsys.readouterr().err
    assert bind_warning("::1") is None and bind_warning("192.168.1.4")
    assert main(["serve", "--model", "effnet-lite0"]) == 2
    assert "serve needs a VLM" in capsys.readouterr().err
    assert main(["serve", "--model", NAMES[0], "--max-images", "65"]) == 2
    assert "--max-inflight" in capsys.readouterr().err
    assert len(ran) == 2


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
