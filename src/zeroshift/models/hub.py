"""Weights from the Hugging Face hub that fail fast, in one quiet line, where there is no network.

The hub counts as unreachable when HF_HUB_OFFLINE is set, or when its endpoint does not answer one short
probe (PROBE_SECONDS, through huggingface_hub's own session, so proxies and HF_ENDPOINT apply). Then a hub
model loads from the local cache only, in huggingface_hub's offline mode (transformers, open_clip and
sentence-transformers all download through it), instead of retrying every file for half a minute; a model
not in the cache is one MissingWeights line naming the spec and the two ways out: local weights, or the
network. With the hub reachable, weights download as before. Either way the libraries' log lines (retries,
"Failed to download ...") and warnings are silenced during the attempt.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import MissingWeights, fetch_failed

PROBE_SECONDS = 2.0
PROBE_KEEP = 60.0  # seconds a probe's answer is reused (one command loads several hub models)
_probes: dict[str, tuple[float, bool]] = {}  # endpoint -> (time.monotonic() of the probe, answered)


def _answers(endpoint: str) -> bool:
    """Whether `endpoint` answers an HTTP HEAD within PROBE_SECONDS (any status: it is reachable)."""
    seen = _probes.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < PROBE_KEEP:
        return seen[1]
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_SECONDS)
        answered = True
    except Exception:  # noqa: BLE001 - any failure to connect (DNS, refused, timeout, proxy) means offline
        answered = False
    _probes[endpoint] = (time.monotonic(), answered)
    return answered


def unreachable() -> str | None:
    """Why the hub cannot be used now ('HF_HUB_OFFLINE is set', '<endpoint> does not answer'), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return None if _answers(constants.ENDPOINT) else f"{constants.ENDPOINT} does not answer"


def offline_error(spec: str, instead: str, why: str) -> MissingWeights:
    """The one line for hub weights neither cached nor fetchable: give `instead`, or reach the network."""
    unset = " and HF_HUB_OFFLINE unset" if why.startswith("HF_HUB_OFFLINE") else ""
    return MissingWeights(f"{spec}: its weights are not on this machine and the Hugging Face hub cannot be reached "
                          f"({why}); give local weights, {instead}, or retry with the network reachable{unset}")


@contextmanager
def quiet() -> Iterator[None]:
    """No log records or warnings from the libraries while inside (not thread-safe: logging is global).
    A NullHandler keeps a bare `logging.error(...)` (open_clip's) from installing a root handler for good."""
    root, disabled = logging.getLogger(), logging.root.manager.disable
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
        if guard is not None:
            root.removeHandler(guard)


@contextmanager
def _offline_mode(on: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (cache only, no request) while inside, when `on`."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextmanager
def fetching(spec: str, instead: str, errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[None]:
    """Load `spec`'s hub weights inside, quietly: with the hub unreachable from the cache only, and an
    error in `errors` becomes offline_error; with it reachable, such an error is fetch_failed. `instead`
    says how to give the weights locally, e.g. 'hf-clip:/path/to/folder'."""
    why = unreachable()
    with quiet(), _offline_mode(why is not None):
        try:
            yield
        except errors as e:
            raise (offline_error(spec, instead, why) if why else fetch_failed(spec, instead, e)) from e
