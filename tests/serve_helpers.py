"""What the serve tests share: tiny served models, the app over them, image bytes and error checks."""
from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import numpy as np
from PIL import Image

from zeroshift.models.tiny import create
from zeroshift.serve.app import create_app
from zeroshift.serve.config import ServeConfig

NAMES = ("tiny-clip:seed=0", "tiny-clip:seed=1")
LABELS = ["red", "green", "blue", "a yellow banana"]


def tiny_models() -> dict:
    return {name: create(name.partition(":")[2]) for name in NAMES}


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
