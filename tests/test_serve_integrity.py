"""`zeroshift serve` integrity (issue 17): odd code points in text fields are one-line 400s naming the
field, and slow clients are timed out (headers closed, bodies 408) under the real uvicorn server."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from zeroshift.cli.main import main
from zeroshift.models.tiny import create
from zeroshift.serve.app import create_app
from zeroshift.serve.config import ServeConfig
from zeroshift.serve.server import HeaderDeadline, uvicorn_options

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


# ---------------------------------------------------------------- slow clients, under uvicorn itself


class Server:
    """The app under uvicorn, with the options `zeroshift serve` passes, on a free port in a thread."""

    def __init__(self, models: dict, timeout: float) -> None:
        cfg = ServeConfig(models=tuple(models), runtime="torch", request_timeout_s=timeout)
        options = {**uvicorn_options(cfg), "log_level": "warning", "port": 0}
        self.server = uvicorn.Server(uvicorn.Config(create_app(cfg, models=models), **options))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def get(self, path: str) -> tuple[int, dict]:
        with self.connect() as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = read_all(s)
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


HEAD = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n")


def test_a_stalled_body_gets_408_and_the_server_stays_healthy(models):
    with Server(models, timeout=1.0) as server:
        with server.connect() as s:
            start = time.monotonic()
            s.sendall(HEAD + b'{"images": [{"data": "iVBOR')  # headers and part of the body, then nothing
            answer = read_all(s)  # the server answers and closes: no socket.timeout
            took = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"connection: close" in answer.lower()
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert "did not arrive within 1 s" in error and "--request-timeout-s" in error
        assert 0.9 < took < 3.5, took
        assert server.get("/healthz") == (200, {"status": "ok", "models": 1, "inflight": 0})


def test_trickled_and_silent_connections_are_closed(models):
    with Server(models, timeout=1.0) as server:
        silent = [server.connect() for _ in range(10)]  # connect, then send nothing
        trickling = [server.connect() for _ in range(10)]  # a request line, then a byte of headers every 0.1 s
        for s in trickling:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns = silent + trickling
        for s in conns:
            s.setblocking(False)
        start, closed = time.monotonic(), {}
        while len(closed) < len(conns) and time.monotonic() - start < 5:
            for i, s in enumerate(conns):
                if i in closed:
                    continue
                try:
                    if s in trickling:
                        s.send(b"a")
                    if s.recv(1024) == b"":
                        closed[i] = time.monotonic() - start
                except BlockingIOError:
                    pass
                except OSError:  # reset, or a broken pipe on send
                    closed[i] = time.monotonic() - start
            assert server.get("/healthz")[0] == 200  # the server answers others meanwhile
            time.sleep(0.1)
        for s in conns:
            s.close()
        assert len(closed) == len(conns), f"{len(conns) - len(closed)} of {len(conns)} slow connections open after 5 s"
        assert all(0.8 < t < 3.0 for t in closed.values()), closed


def test_a_slow_model_is_not_cut_off_by_the_deadline(models):
    """The head deadline runs only while no request is in progress: a request answered slowly is fine."""
    slow = {NAME: create("seed=0")}
    inner = slow[NAME].encode_image
    slow[NAME].encode_image = lambda images: (time.sleep(1.5), inner(images))[1]
    body = json.dumps({"images": [{"data": IMAGE}], "labels": "cat,dog"}).encode()
    with Server(slow, timeout=0.5) as server, server.connect() as s:
        s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_request_timeout_is_an_option_with_a_default(models, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--request-timeout-s" in help_text and "(default: 30.0)" in help_text
    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw))
    assert main(["serve", "--model", NAME, "--runtime", "torch", "--request-timeout-s", "7"]) == 0
    assert issubclass(ran[0]["http"], HeaderDeadline) and ran[0]["http"].header_timeout == 7.0
    assert ran[0]["host"] == "127.0.0.1" and ran[0]["port"] == 8000
    assert main(["serve", "--model", NAME, "--request-timeout-s", "0"]) == 2
    assert "--request-timeout-s must be positive" in capsys.readouterr().err
