"""The refusals of the service: a RequestError carries the HTTP status it answers with."""
from __future__ import annotations

from ..errors import ZeroshiftError


class RequestError(ZeroshiftError):
    """A request the service refuses; `status` is the HTTP status it answers with."""

    status = 400


class RequestTimeout(RequestError):
    """A request body that did not arrive within `request_timeout_s`; the connection is closed after."""

    status = 408


class TooLarge(RequestError):
    """A body, image or list beyond the configured limits."""

    status = 413


class Unsupported(RequestError):
    """A body of another media type than multipart/form-data or JSON."""

    status = 415


class Busy(RequestError):
    """More images in flight than `max_inflight`; the client should retry shortly."""

    status = 503


def one_line(error: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
