"""`zeroshift serve`: an HTTP service and web page for served models."""
from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading

from .options import command


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.serve.config import ServeConfig

    command(parser, ServeConfig, run)
    for action in parser._actions:  # `--model A --model B` adds up (a generated list option would replace)
        if action.dest == "models":
            action.__class__ = argparse._ExtendAction
            action.option_strings, action.metavar = ["--model", "--models"], "SPEC"


def run(cfg) -> int:
    """Load the models, then serve until interrupted."""
    from zeroshift.errors import MissingBackend
    from zeroshift.serve.app import create_app
    from zeroshift.serve.config import bind_warning
    from zeroshift.serve.server import uvicorn_options

    try:
        import uvicorn
    except ImportError:
        raise MissingBackend("zeroshift serve needs uvicorn: pip install 'zeroshift[serve]'") from None
    check_port(cfg.host, cfg.port)  # before loading models: a taken port fails in one line, at once
    app = create_app(cfg)
    warning = bind_warning(cfg.host)
    if warning:
        print(warning, file=sys.stderr)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"serving {', '.join(cfg.models)} on http://{shown}:{cfg.port}/ (API docs at /docs)", file=sys.stderr)
    quiet, interrupted = _QuietShutdown(), []

    def on_sigint(sig, frame) -> None:  # what uvicorn calls when it raises the signal again after its shutdown
        interrupted.append(sig)
        raise KeyboardInterrupt

    logging.getLogger("uvicorn.error").addFilter(quiet)
    previous = _on_sigint(on_sigint)
    try:
        uvicorn.run(app, **uvicorn_options(cfg))
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
        _on_sigint(previous)
    if interrupted:  # uvicorn shut down on Ctrl-C and swallowed the KeyboardInterrupt it re-raised
        raise KeyboardInterrupt  # main prints the one line "interrupted" and exits 130
    return 0


def check_port(host: str, port: int) -> None:
    """Raise ZeroshiftError unless `port` on `host` can be bound now (as uvicorn binds it, SO_REUSEADDR)."""
    import socket

    from zeroshift.errors import ZeroshiftError

    if port == 0:  # the system picks a free one
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ZeroshiftError(f"cannot bind --host {host}: {e.strerror or e}; "
                             "give an address such as 127.0.0.1") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            why = ("is in use (another server is running there?)" if e.errno == errno.EADDRINUSE
                   else f"cannot be bound ({e.strerror or e})")
            raise ZeroshiftError(f"port {port} on {host} {why}; choose another --port or stop the other "
                                 "server") from None


def _on_sigint(handler):
    """Install `handler` for SIGINT (main thread only, where signals are delivered); returns the old one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


class _QuietShutdown(logging.Filter):
    """Drops uvicorn's INFO lines from "Shutting down" on, so Ctrl-C prints one line; warnings and
    errors of the shutdown still show."""

    stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.stopping = self.stopping or record.getMessage() == "Shutting down"
        return not self.stopping or record.levelno >= logging.WARNING
