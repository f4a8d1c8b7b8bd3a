"""How `zeroshift serve` runs its app under uvicorn: the options it passes, and a deadline on request heads.

uvicorn times out a connection only while it idles between requests (`timeout_keep_alive`, reset by
every byte received) and bounds the size of a request head (h11's 16 KiB), never the time it takes:
a client that opens a connection and sends nothing, or a byte of headers now and then, holds it for
good. HeaderDeadline closes such a connection `request_timeout_s` after it last had no request in
progress; the body's own deadline is the app's (bodies.read_request, 408).
"""
from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError:  # pragma: no cover - depends on the install
    from ..errors import MissingBackend

    raise MissingBackend("zeroshift serve needs uvicorn: pip install 'zeroshift[serve]'") from None

from .config import ServeConfig

__all__ = ["HeaderDeadline", "uvicorn_options"]


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), closing a connection that has no request in progress (just
    opened, or its last response sent) and has not delivered a whole request head within
    `header_timeout` seconds. The deadline is armed once per wait, so trickled bytes never extend it;
    a request being read or answered (a slow model included) is never cut off by it."""

    header_timeout: float = 30.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting(self) -> bool:
        """True while no request head has arrived since the connection opened or its last response."""
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def _watch(self) -> None:
        if not self._waiting():
            self._disarm()
        elif self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting():
            self.logger.info("closing a connection that sent no whole request head in %g s", self.header_timeout)
            self.transport.close()


def uvicorn_options(cfg: ServeConfig) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run` (or `uvicorn.Config`) for a server with options `cfg`."""
    protocol = type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": float(cfg.request_timeout_s)})
    return {"host": cfg.host, "port": cfg.port, "log_level": "info", "http": protocol}
