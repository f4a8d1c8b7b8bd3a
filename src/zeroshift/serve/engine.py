"""The serving engine: models loaded once, a label-embedding cache, and per-model request batching.

Independent of the HTTP layer (app.py): it takes decoded request fields (image bytes, label lists,
template lists, model names) and returns plain dicts. Model work runs in one worker thread per model,
never on the event loop; images arriving together for a model are encoded in one `encode_image` call
by a Batcher (an asyncio queue and a worker task per model). Requests beyond `max_inflight` images
are refused at once with `Busy` (HTTP 503), not queued.
"""
from __future__ import annotations

import asyncio
import binascii
import io
import json
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import specs
from ..data.base import BadImage
from ..data.images import DEFAULT_MAX_PIXELS, decode_image
from ..data.templates import get_templates
from ..errors import ZeroshiftError
from ..models.vlm import VLM
from ..zeroshot.classifier import check_classnames, classify, zeroshot_weights

MAX_TEXT_CHARS = 500  # one label, template or text to embed
MAX_TEMPLATES = 64  # templates per request
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """Options of `zeroshift serve` (and of `create_app`)."""

    models: tuple[str, ...] = field(metadata={
        "help": "a VLM spec to serve (repeat --model for several); clients may use only these", "flag": "--model"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; anything but loopback is public"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    runtime: str = field(default="auto", metadata={
        "help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    templates: str | None = field(default=None, metadata={
        "help": "template set name or file used when a request gives none (as `zeroshift predict --templates`)"})
    max_upload_mb: float = field(default=20.0, metadata={"help": "largest request body in MB (413 beyond)"})
    max_images: int = field(default=32, metadata={"help": "images per request (413 beyond)"})
    max_labels: int = field(default=256, metadata={"help": "labels (or texts to embed) per request (413 beyond)"})
    max_inflight: int = field(default=64, metadata={
        "help": "images being processed at once over all requests; a request beyond it gets 503 at once"})
    batch_window_ms: float = field(default=5.0, metadata={
        "help": "how long a model's batcher waits for more images before encoding a batch"})
    batch_size: int = field(default=32, metadata={"help": "most images per encode_image call"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "non-JPEG uploads above this many pixels are refused (413); JPEGs are decoded at reduced scale"})
    cache_size: int = field(default=128, metadata={"help": "label sets whose text embeddings are kept per server"})

    def check(self) -> None:
        """Raise ZeroshiftError on an unusable combination of options."""
        if not self.models:
            raise ZeroshiftError("no model to serve: give at least one --model SPEC (a VLM such as tiny-clip:seed=0)")
        for name in ("max_images", "max_labels", "max_inflight", "batch_size", "max_pixels", "cache_size"):
            if getattr(self, name) < 1:
                raise ZeroshiftError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if not self.max_upload_mb > 0:
            raise ZeroshiftError(f"--max-upload-mb must be positive, not {self.max_upload_mb}")
        if self.batch_window_ms < 0:
            raise ZeroshiftError(f"--batch-window-ms cannot be negative ({self.batch_window_ms})")
        if self.max_images > self.max_inflight:
            raise ZeroshiftError(f"--max-images {self.max_images} exceeds --max-inflight {self.max_inflight}: "
                                 "no request that large could ever run; lower one or raise the other")
        if not 0 <= self.port <= 65535:
            raise ZeroshiftError(f"--port {self.port} is not a TCP port (0-65535)")


def bind_warning(host: str) -> str | None:
    """The warning line to print when `host` is not a loopback address, else None."""
    if host in LOCAL_HOSTS:
        return None
    return (f"warning: binding {host} makes the service reachable from other machines; it has no "
            "authentication, so put it behind a proxy that has, or bind 127.0.0.1")


class RequestError(ZeroshiftError):
    """A request the service refuses; `status` is the HTTP status it answers with."""

    status = 400


class TooLarge(RequestError):
    """A body, image or list beyond the configured limits."""

    status = 413


class Busy(RequestError):
    """More images in flight than `max_inflight`; the client should retry shortly."""

    status = 503


def one_line(error: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# ---------------------------------------------------------------- request checks


def check_labels(labels: Sequence[str], limit: int) -> list[str]:
    """Stripped labels; RequestError on none, blank, duplicate or overlong ones, TooLarge beyond `limit`."""
    if not labels:
        raise RequestError("no labels given: send labels, comma- or newline-separated (e.g. 'cat,dog')")
    if len(labels) > limit:
        raise TooLarge(f"{len(labels)} labels; this server takes at most {limit} per request")
    for i, label in enumerate(labels):
        if isinstance(label, str) and len(label) > MAX_TEXT_CHARS:
            raise RequestError(f"label {i} is {len(label)} characters long; at most {MAX_TEXT_CHARS}")
    try:
        return check_classnames(labels)
    except ZeroshiftError as e:
        raise RequestError(str(e)) from None


def check_templates(templates: Sequence[str]) -> list[str]:
    """Request templates, each holding '{c}' and no other braces; RequestError otherwise."""
    out = []
    for i, t in enumerate(templates):
        if not isinstance(t, str):
            raise RequestError(f"template {i} is not a string; give lines such as 'a photo of a {{c}}.'")
        if t.strip():
            out.append(t.strip())
    if not out:
        raise RequestError("no templates given; leave templates out or give lines such as 'a photo of a {c}.'")
    if len(out) > MAX_TEMPLATES:
        raise TooLarge(f"{len(out)} templates; this server takes at most {MAX_TEMPLATES} per request")
    for i, t in enumerate(out):
        if len(t) > MAX_TEXT_CHARS:
            raise RequestError(f"template {i} is {len(t)} characters long; at most {MAX_TEXT_CHARS}")
        rest = t.replace("{c}", "")
        if "{c}" not in t or "{" in rest or "}" in rest:
            raise RequestError(f"template {i} {t[:60]!r} must contain '{{c}}' where the label goes, and no other braces")
    return out


def check_texts(texts: Sequence[str], limit: int) -> list[str]:
    """Texts to embed: 1..limit non-empty strings of at most MAX_TEXT_CHARS."""
    if not texts:
        raise RequestError("no texts given; send {\"texts\": [\"a photo of a cat\", ...]}")
    if len(texts) > limit:
        raise TooLarge(f"{len(texts)} texts; this server takes at most {limit} per request")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise RequestError(f"text {i} is empty or not a string; every text needs some characters")
        if len(t) > MAX_TEXT_CHARS:
            raise RequestError(f"text {i} is {len(t)} characters long; at most {MAX_TEXT_CHARS}")
    return list(texts)


def decode_base64(data: str, what: str) -> bytes:
    """Bytes of standard base64 (whitespace ignored, an optional `data:...;base64,` prefix dropped)."""
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or not head.endswith(";base64"):
            raise RequestError(f"{what}: a data URL must be base64 ('data:image/png;base64,...')")
    try:
        return binascii.a2b_base64("".join(data.split()).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RequestError(f"{what}: data is not valid base64") from None


def decode_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An uploaded file -> RGB image, as `zeroshift predict` decodes it; TooLarge for decompression
    bombs (judged from the header, before any pixel is read), RequestError for anything unreadable."""
    if not data:
        raise RequestError(f"image {name!r} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = Image.open(io.BytesIO(data))  # lazy: header only
            w, h = header.size
            is_jpeg = header.format == "JPEG"
    except Image.DecompressionBombError:
        if not data.startswith(b"\xff\xd8"):  # JPEGs are drafted down by decode_image
            raise TooLarge(f"image {name!r} has more pixels than Pillow's decompression-bomb limit") from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on bad data
        raise RequestError(f"image {name!r} is not an image this server can read") from None
    else:
        if not is_jpeg and w * h > max_pixels:
            raise TooLarge(f"image {name!r} is {w}x{h} = {w * h / 1e6:.1f}M pixels; this server decodes at most "
                           f"{max_pixels / 1e6:.1f}M")
    try:
        return decode_image(data, max_pixels=max_pixels)
    except BadImage as e:
        raise RequestError(f"image {name!r} cannot be decoded ({one_line(e).removeprefix(f'<{len(data)} bytes>: ')})"
                           ) from None


# ---------------------------------------------------------------- the label cache


class LabelCache:
    """Zero-shot weights [C, d] by (model, labels, templates), least recently used first out; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            self.misses += 1

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------- batching


class Batcher:
    """Encodes the images submitted within `window_s` of each other in one call of `encode`
    ([B, 3, H, W] -> [B, d]) on `executor`. One queue and worker task per event loop (started on the
    first submit, so the engine works under any server or test client)."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], executor: ThreadPoolExecutor,
                 max_batch: int, window_s: float) -> None:
        self.encode, self.executor = encode, executor
        self.max_batch, self.window_s = max_batch, window_s
        self.calls = 0  # encode calls made (for stats and tests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._carry: tuple[torch.Tensor, asyncio.Future] | None = None

    async def submit(self, images: torch.Tensor) -> torch.Tensor:
        """Features [n, d] of images [n, 3, H, W], encoded together with whatever else arrives meanwhile."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue, self._carry = loop, asyncio.Queue(), None
            self._task = loop.create_task(self._work(), name="zeroshift-batcher")
        future: asyncio.Future = loop.create_future()
        self._queue.put_nowait((images, future))
        return await future

    async def stop(self) -> None:
        """Cancel the worker of the running loop (lifespan shutdown)."""
        task, self._task = self._task, None
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        """The next batch: the first waiting item, then more until max_batch images or the window ends."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first, self._carry = self._carry or await self._queue.get(), None
        items, n = [first], len(first[0])
        deadline = loop.time() + self.window_s
        while n < self.max_batch:
            remaining = deadline - loop.time()
            try:
                item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                    self._queue.get(), remaining)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if n + len(item[0]) > self.max_batch:
                self._carry = item  # starts the next batch
                break
            items.append(item)
            n += len(item[0])
        return items

    async def _work(self) -> None:
        while True:
            items = [(x, f) for x, f in await self._collect() if not f.done()]  # done: the client went away
            try:
                await self._run(items)
            except Exception as e:  # noqa: BLE001 - handed to each waiting request, the worker goes on
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)

    async def _run(self, items: list[tuple[torch.Tensor, asyncio.Future]]) -> None:
        groups: dict[tuple, list] = {}
        for x, f in items:  # one encode call per input shape (models with a fixed input size have one)
            groups.setdefault(tuple(x.shape[1:]), []).append((x, f))
        for group in groups.values():
            batch = torch.cat([x for x, _ in group])  # [B, 3, H, W]
            self.calls += 1
            feats = await asyncio.get_running_loop().run_in_executor(self.executor, self.encode, batch)  # [B, d]
            start = 0
            for x, f in group:
                if not f.done():
                    f.set_result(feats[start:start + len(x)])  # [n, d]
                start += len(x)


# ---------------------------------------------------------------- models


def _scheme_kind(spec: str) -> str | None:
    """The registered scheme kind ('vlm', 'image', 'text') of a spec string, or None if it does not parse."""
    try:
        return specs.parse(spec, specs.MODEL_SCHEMES)[0].kind
    except ZeroshiftError:
        return None


def _run_folder(spec: str) -> Path | None:
    """The folder of a `run:PATH@DIGEST` spec (as load_run names a loaded run), else None."""
    if not spec.startswith("run:"):
        return None
    path, sep, digest = spec[4:].rpartition("@")
    folder = Path(path if sep and all(c in "0123456789abcdef" for c in digest.lower()) else spec[4:])
    return folder if folder.is_dir() else None


def describe(name: str, vlm: VLM) -> dict[str, Any]:
    """The /v1/models entry of a served model: kind, teacher, dims, parameter count, results, model card."""
    info: dict[str, Any] = {"spec": name, "kind": _scheme_kind(name) or "model", "teacher": None,
                            "dims": {"joint": int(vlm.dim)}, "parameters": None, "results": [], "card": None}
    params = getattr(vlm, "parameters", None)
    if callable(params):
        info["parameters"] = int(sum(p.numel() for p in params()))
    folder = _run_folder(str(getattr(vlm, "spec", ""))) or _run_folder(name)
    if folder is None:
        return info
    from ..models.artefact import CARD, read_run
    from ..zeroshot.records import read_records

    config, _ = read_run(folder)
    info["kind"] = str(config.get("kind") or "model")
    info["teacher"] = config["teacher"] if isinstance(config.get("teacher"), str) else None
    dims = config.get("dims") if isinstance(config.get("dims"), dict) else {}
    info["dims"].update({k: v for k, v in dims.items() if isinstance(v, int) and not isinstance(v, bool)})
    try:
        records = read_records(folder / "results") if (folder / "results").is_dir() else []
    except (OSError, ValueError):
        records = []
    keep = ("dataset", "model", "pretrained", "task", "metrics", "language")
    info["results"] = [{k: r[k] for k in keep if k in r} for r in records]
    card = folder / CARD
    info["card"] = card.read_text(encoding="utf-8", errors="replace")[:100_000] if card.is_file() else None
    return info


@dataclass
class Served:
    """One served model: its name, the VLM, its /v1/models entry, its worker thread and batcher."""

    name: str
    vlm: VLM
    info: dict
    executor: ThreadPoolExecutor
    batcher: Batcher


def _load(name: str, runtime: str) -> VLM:
    kind = _scheme_kind(name)
    if kind not in (None, "vlm"):
        raise ZeroshiftError(f"{name} is an {kind} model, not a VLM; serve needs a VLM "
                             "(e.g. tiny-clip:seed=0, conse:effnet-lite2+minilm or a run: folder)")
    return specs.load(name, runtime=runtime)


def _single_thread() -> None:
    torch.set_num_threads(1)  # per-image transforms: see models/transforms.one_thread


class Engine:
    """The models a server holds and the work it does for requests (all async, model work off the loop)."""

    def __init__(self, config: ServeConfig, models: Mapping[str, VLM] | None = None) -> None:
        config.check()
        preloaded = dict(models or {})
        names = list(dict.fromkeys(config.models))
        extra = [n for n in preloaded if n not in names]
        if extra:
            raise ZeroshiftError(f"preloaded model {extra[0]!r} is not in config.models; name every served model there")
        self.config = config
        self.served: dict[str, Served] = {}
        self._aliases: dict[str, str] = {}
        for name in names:
            vlm = preloaded[name] if name in preloaded else _load(name, config.runtime)
            for attr in ("encode_image", "encode_text", "image_transform", "dim"):
                if not hasattr(vlm, attr):
                    raise ZeroshiftError(f"{name} loads as a {type(vlm).__name__} without {attr}; serve needs a VLM")
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"zeroshift-model-{len(self.served)}")
            batcher = Batcher(vlm.encode_image, executor, config.batch_size, config.batch_window_ms / 1000)
            self.served[name] = Served(name, vlm, describe(name, vlm), executor, batcher)
            self._aliases[name] = name
            self._aliases.setdefault(str(getattr(vlm, "spec", name)), name)
        self.default_templates = get_templates(config.templates, None)
        self.labels = LabelCache(config.cache_size)
        self.inflight = 0
        self._inflight_lock = threading.Lock()
        self._decoder = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                           initializer=_single_thread, thread_name_prefix="zeroshift-decode")

    # ------------------------------------------------------------ bookkeeping

    def resolve(self, names: Sequence[str] | None) -> list[Served]:
        """The served models a request names (all of them when it names none); RequestError for any
        other name. Never loads anything: a name is looked up, not parsed."""
        if not names:
            return list(self.served.values())
        out = []
        for name in names:
            key = self._aliases.get(name) if isinstance(name, str) else None
            if key is None:
                shown = json.dumps(name)[:80]
                raise RequestError(f"model {shown} is not served here; served: {', '.join(self.served)}")
            if self.served[key] not in out:
                out.append(self.served[key])
        return out

    @contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Count `n` images in flight for the block; Busy (503) when that would pass max_inflight."""
        with self._inflight_lock:
            if self.inflight + n > self.config.max_inflight:
                raise Busy(f"busy: {self.inflight} images in flight, limit {self.config.max_inflight}; "
                           "retry in a moment")
            self.inflight += n
        try:
            yield
        finally:
            with self._inflight_lock:
                self.inflight -= n

    async def stop(self) -> None:
        """Stop the batch workers of the running loop."""
        for served in self.served.values():
            await served.batcher.stop()

    # ------------------------------------------------------------ model work

    async def _prepare(self, images: Sequence[tuple[str, bytes]], served: Sequence[Served]) -> dict[str, torch.Tensor]:
        """Decode every image once and transform it for each model: name -> [n, 3, H, W]."""
        loop = asyncio.get_running_loop()
        transforms = [(s.name, s.vlm.image_transform) for s in served]

        def one(name: str, data: bytes) -> list[torch.Tensor]:
            image = decode_upload(data, name, self.config.max_pixels)
            out = []
            for model, transform in transforms:
                try:
                    out.append(transform(image))  # [3, H, W]
                except Exception as e:  # noqa: BLE001 - a transform that fails on this image
                    raise RequestError(f"image {name!r} cannot be prepared for {model} ({one_line(e)})") from None
            return out

        jobs = [loop.run_in_executor(self._decoder, one, name, data) for name, data in images]
        done = await asyncio.gather(*jobs, return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return {s.name: torch.stack([row[i] for row in done]) for i, s in enumerate(served)}  # [n, 3, H, W]

    async def weights(self, served: Served, labels: list[str], templates: list[str]) -> torch.Tensor:
        """Zero-shot weights [C, d] for the labels, from the cache or computed once on the model's thread."""
        key = (served.name, tuple(labels), tuple(templates))
        hit = self.labels.get(key)
        if hit is not None:
            return hit

        def compute() -> torch.Tensor:
            again = self.labels.get(key)  # an identical request queued before this one filled it
            if again is not None:
                return again
            w = zeroshot_weights(served.vlm, labels, templates)  # [C, d]
            self.labels.put(key, w)
            return w

        return await asyncio.get_running_loop().run_in_executor(served.executor, compute)

    async def _classify_one(self, served: Served, images: torch.Tensor, labels: list[str],
                            templates: list[str]) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        weights, feats = await asyncio.gather(self.weights(served, labels, templates),
                                              served.batcher.submit(images))  # [C, d], [n, d]
        probs = classify(feats, weights).softmax(dim=-1)  # [n, C]
        if not bool(torch.isfinite(probs).all()):
            raise ZeroshiftError(f"{served.name} gave non-finite scores for these images")
        return probs, (time.perf_counter() - start) * 1000

    async def classify(self, images: Sequence[tuple[str, bytes]], labels: Sequence[str],
                       templates: Sequence[str] | None = None, models: Sequence[str] | None = None) -> list[dict]:
        """Per image `{"image", "models": [{"model", "ranking", "top1", "ms"}]}`, rankings best first with
        the probabilities `zeroshift predict` gives (softmax of 100 x cosine, rounded to 6 places)."""
        served = self.resolve(models)
        self._check_images(images)
        labels = check_labels(labels, self.config.max_labels)
        templates = self.default_templates if templates is None else check_templates(templates)
        with self.admit(len(images)):
            tensors = await self._prepare(images, served)
            done = await asyncio.gather(*(self._classify_one(s, tensors[s.name], labels, templates) for s in served))
        results = [{"image": name, "models": []} for name, _ in images]
        for s, (probs, ms) in zip(served, done):
            for result, row in zip(results, probs):
                order = row.argsort(descending=True).tolist()
                ranking = [{"label": labels[j], "prob": round(float(row[j]), 6)} for j in order]
                result["models"].append({"model": s.name, "ranking": ranking, "top1": ranking[0]["label"],
                                         "ms": round(ms, 2)})
        return results

    async def embed_images(self, images: Sequence[tuple[str, bytes]], model: str | None = None) -> dict:
        """Raw joint-space image embeddings (not normalised) of one served model."""
        served = self.resolve([model] if model else None)[0]
        self._check_images(images)
        with self.admit(len(images)):
            tensors = await self._prepare(images, [served])
            feats = await served.batcher.submit(tensors[served.name])  # [n, d]
        return self._embedding(served, feats)

    async def embed_texts(self, texts: Sequence[str], model: str | None = None) -> dict:
        """Raw joint-space text embeddings (not normalised) of one served model."""
        served = self.resolve([model] if model else None)[0]
        texts = check_texts(texts, self.config.max_labels)
        loop = asyncio.get_running_loop()
        feats = await loop.run_in_executor(served.executor, served.vlm.encode_text, texts)  # [M, d]
        return self._embedding(served, feats)

    def _check_images(self, images: Sequence[tuple[str, bytes]]) -> None:
        if not images:
            raise RequestError("no images given; send one or more image files")
        if len(images) > self.config.max_images:
            raise TooLarge(f"{len(images)} images; this server takes at most {self.config.max_images} per request")

    @staticmethod
    def _embedding(served: Served, feats: torch.Tensor) -> dict:
        feats = torch.as_tensor(feats).float().cpu()  # [n, d]
        if not bool(torch.isfinite(feats).all()):
            raise ZeroshiftError(f"{served.name} gave non-finite embeddings")
        return {"model": served.name, "dim": int(feats.shape[-1]), "normalized": False,
                "embeddings": feats.tolist()}
