"""Request batching: images arriving together for a model are encoded in one call, off the event loop."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


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
