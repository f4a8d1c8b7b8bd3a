"""Serving throughput: POST /v1/classify on loopback at 1, 4 and 16 concurrent clients, against in-process predict.

One run, one model, one real photo per request, fixed labels, in this order:
  served   the app (zeroshift.serve.app) under uvicorn in a subprocess; C asyncio httpx clients send
           --requests requests in all, each waiting for its answer before the next: requests per second,
           p50/p95 latency, and requests/s as a ratio of direct and cached images/s
  direct   zeroshift.predict on the image in this process (server stopped), one image per call (decode,
           transform, encode the labels and the image, softmax): images per second
  cached   the same per-image work with the label weights computed once, as the server caches them
The loop-back is the only network used. The 1-minute load average is recorded at start and end: on a shared
machine, other work shows up in every figure.
The server's first answer is checked against predict's ranking (labels in the same order, probabilities within 1e-5).

    python bench/serve.py [--model SPEC] [--requests N]     # default tiny-clip:seed=0, a smoke run
    python bench/serve.py --model conse:effnet-lite2+minilm
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from common import conditions, timed, write_results

import zeroshift
from zeroshift.data.images import decode_image
from zeroshift.data.templates import get_templates
from zeroshift.errors import ZeroshiftError
from zeroshift.models.transforms import one_thread
from zeroshift.ranking import predict
from zeroshift.zeroshot.classifier import classify, zeroshot_weights
from zeroshift.zeroshot.labels import parse_labels

HERE = Path(__file__).parent
LABELS = "astronaut,cat,dog,cup of coffee,rocket,flag,car,tree,house,person"
SERVER = """
import sys, uvicorn
from zeroshift.serve.app import create_app
from zeroshift.serve.config import ServeConfig
from zeroshift.specs import load
spec, port, runtime = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = create_app(ServeConfig(models=(spec,)), models={spec: load(spec, runtime=runtime)})
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def default_image() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / "astronaut.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct(vlm, image: Path, labels: list[str], n: int) -> tuple[float, list[dict]]:
    """In-process predict, one image per call: (images per second over n calls, the last ranking)."""
    calls = timed(lambda: predict(vlm, [image], labels), n, warmup=1)
    return n / calls.total, calls.result[0]["ranking"]


def direct_cached(vlm, image: Path, labels: list[str], n: int) -> float:
    """predict's per-image work with the label weights computed once (as the server caches them): images/s."""
    weights = zeroshot_weights(vlm, labels, get_templates(None, None))  # [C, d]

    def once() -> torch.Tensor:
        with one_thread():
            x = vlm.image_transform(decode_image(image))[None]  # [1, 3, H, W]
        return classify(vlm.encode_image(x), weights).softmax(dim=-1)  # [1, C]

    return n / timed(once, n, warmup=1).total


def start_server(spec: str, runtime: str, port: int, timeout: float = 300) -> subprocess.Popen:
    """The app in a subprocess, returned once GET /v1/models answers."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, spec, str(port), runtime])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ZeroshiftError(f"the server exited with code {proc.returncode} before answering; see its output above")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise ZeroshiftError(f"the server did not answer within {timeout:.0f} s")


async def load_test(url: str, payload: dict, clients: int, n: int) -> dict:
    """n requests from `clients` concurrent clients (each sends its next request after its answer)."""
    latencies: list[float] = []
    remaining = n

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await http.post(url, files=payload["files"], data=payload["data"])
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise ZeroshiftError(f"POST /v1/classify answered {r.status_code}: {r.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))  # warm-up: one request per client
        latencies.clear()
        remaining = n
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")  # 5% steps
    return {"clients": clients, "requests": n, "rps": n / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * cuts[18]}


def served_ranking(url: str, payload: dict, spec: str) -> list[dict]:
    """The server's ranking of the image by `spec`."""
    r = httpx.post(url, files=payload["files"], data=payload["data"], timeout=120)
    if r.status_code != 200:
        raise ZeroshiftError(f"POST /v1/classify answered {r.status_code}: {r.text[:200]}")
    return next(m for m in r.json()["results"][0]["models"] if m["model"] == spec)["ranking"]


def same_ranking(got: list[dict], want: list[dict]) -> bool:
    """Same labels in the same order, probabilities within 1e-5."""
    return [g["label"] for g in got] == [w["label"] for w in want] and all(
        abs(g["prob"] - w["prob"]) <= 1e-5 for g, w in zip(got, want))


def run(a) -> dict:
    """Served first (this process loads no model meanwhile: its idle thread pools would compete with the
    server's), then direct and cached in this process with the server gone."""
    image = Path(a.image) if a.image else default_image()
    labels = parse_labels(a.labels)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/classify"
    payload = {"files": [("image", (image.name, image.read_bytes(), "image/png"))],
               "data": {"labels": a.labels, "model": a.model}}
    proc = start_server(a.model, a.runtime, port)
    try:
        got = served_ranking(url, payload, a.model)
        levels = [asyncio.run(load_test(url, payload, c, max(a.requests, c))) for c in a.clients]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    vlm = zeroshift.load(a.model, runtime=a.runtime)
    direct_img_s, want = direct(vlm, image, labels, a.direct)
    cached_img_s = direct_cached(vlm, image, labels, a.direct)
    for lv in levels:
        lv["over_direct"] = lv["rps"] / direct_img_s
        lv["over_direct_cached"] = lv["rps"] / cached_img_s
    return {**conditions(), "model": a.model,
            "runtime": a.runtime, "image": image.name, "image_bytes": image.stat().st_size, "labels": len(labels),
            "direct_img_s": direct_img_s, "direct_cached_img_s": cached_img_s, "direct_calls": a.direct,
            "matches_predict": same_ranking(got, want), "levels": levels}


def load_runs(path: Path) -> list[dict]:
    """Earlier runs of other models kept in serve.json (one entry per model), or none."""
    try:
        return json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def report(runs: list[dict]) -> str:
    """serve.md: one section per model."""
    head = ["clients", "requests", "req/s", "p50 ms", "p95 ms", "req/s / predict img/s", "req/s / cached img/s"]
    lines = ["# Serving throughput", "",
             ("POST /v1/classify on loopback (uvicorn subprocess, asyncio httpx clients, each waiting for its answer), "
              "one photo per request, against in-process `zeroshift.predict` on the same photo, one image per call."),
             ("`predict` embeds the labels on every call; the server caches them per label set, so the table also "
              "gives the ratio to predict's per-image work with the label weights computed once (*cached*)."),
             "Produced by `python bench/serve.py [--model SPEC]`; each model's figures come from one run."]
    for r in runs:
        load = r.get("load_avg_1min", [float("nan")] * 2)
        lines += ["", f"## `{r['model']}` (runtime {r['runtime']})", "",
                  f"Machine: {r['machine']}; 1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
                  (f"Request: {r['image']} ({r['image_bytes'] // 1024} KiB), {r['labels']} labels. Direct predict: "
                   f"{r['direct_img_s']:.1f} images/s; cached: {r['direct_cached_img_s']:.1f} images/s. "
                   "Server ranking equals predict's: "
                   f"{'yes' if r['matches_predict'] else 'NO'}."), "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lv in r["levels"]:
            lines.append(f"| {lv['clients']} | {lv['requests']} | {lv['rps']:.1f} | {lv['p50_ms']:.1f} | "
                         f"{lv['p95_ms']:.1f} | {lv['over_direct']:.2f} | {lv['over_direct_cached']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-clip:seed=0")
    p.add_argument("--runtime", default="auto", help="torch, onnx or auto, for both the server and predict")
    p.add_argument("--requests", type=int, default=64, help="timed requests per concurrency level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--direct", type=int, default=32, help="timed in-process predict calls")
    p.add_argument("--image", default=None, help="the photo to send (default: scikit-image's astronaut.png)")
    p.add_argument("--labels", default=LABELS)
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    r = run(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [x for x in load_runs(out / "serve.json") if x["model"] != r["model"]] + [r]  # one entry per model
    write_results(out, "serve", report(runs), {"runs": runs}, footer=False)  # each model's section names its run


if __name__ == "__main__":
    main()
