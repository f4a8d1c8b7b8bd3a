"""`zeroshift transfer`: Zoom-shot, a bridge from any vision encoder into a VLM's joint space."""
from __future__ import annotations

import argparse

from .method import configure_method


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.methods.config import TransferConfig

    configure_method(parser, TransferConfig, "transfer")
