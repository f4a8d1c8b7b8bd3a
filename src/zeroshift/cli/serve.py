"""`zeroshift serve`: an HTTP service and web page for served models."""
from __future__ import annotations

import argparse
import sys

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
    app = create_app(cfg)
    warning = bind_warning(cfg.host)
    if warning:
        print(warning, file=sys.stderr)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"serving {', '.join(cfg.models)} on http://{shown}:{cfg.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, **uvicorn_options(cfg))
    return 0
