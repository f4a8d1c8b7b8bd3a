"""`zeroshift serve`: every endpoint, the label cache and the CLI, on two tiny-clip models (bad input,
batching and back-pressure: test_serve_robustness.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import (
    LABELS,
    NAMES,
    assert_error,
    assert_healthy,
    b64,
    jpeg,
    make_app,
    png,
    tiny_models,
)

from zeroshift.cli.main import main
from zeroshift.models.tiny import create
from zeroshift.ranking import predict
from zeroshift.serve.app import create_app
from zeroshift.serve.config import ServeConfig, bind_warning


@pytest.fixture(scope="module")
def models() -> dict:
    return tiny_models()


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
