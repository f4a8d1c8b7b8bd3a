"""The serving engine: the served models, a label-embedding cache, and the work requests ask for.

Independent of the HTTP layer: it takes decoded request fields (image bytes, label lists, template
lists, model names) and returns plain dicts. Model work runs in one worker thread per model, never on
the event loop; images arriving together for a model are encoded in one `encode_image` call by its
Batcher. Requests beyond `max_inflight` images are refused at once with `Busy` (HTTP 503), not queued.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from ..data.templates import get_templates
from ..errors import ZeroshiftError
from ..models.vlm import VLM
from ..zeroshot.classifier import classify, zeroshot_weights
from .checks import (
    check_images,
    check_labels,
    check_templates,
    check_texts,
    decode_upload,
)
from .config import ServeConfig
from .errors import Busy, RequestError, one_line
from .served import Served, load_vlm


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
            vlm = preloaded[name] if name in preloaded else load_vlm(name, config.runtime)
            self.served[name] = Served.start(name, vlm, len(self.served), config)
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
        # one decode for every model asked: at the largest side any of them needs (None: the whole image)
        sides = [s.decode_side for s in served]
        side = None if None in sides else max(sides, default=None)

        def one(name: str, data: bytes) -> list[torch.Tensor]:
            image = decode_upload(data, name, self.config.max_pixels, side)
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
        check_images(images, self.config.max_images)
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
        check_images(images, self.config.max_images)
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

    @staticmethod
    def _embedding(served: Served, feats: torch.Tensor) -> dict:
        feats = torch.as_tensor(feats).float().cpu()  # [n, d]
        if not bool(torch.isfinite(feats).all()):
            raise ZeroshiftError(f"{served.name} gave non-finite embeddings")
        return {"model": served.name, "dim": int(feats.shape[-1]), "normalized": False,
                "embeddings": feats.tolist()}
