"""`zeroshift align`: OTTER, a new VLM from a pretrained image tower and a sentence encoder."""
from __future__ import annotations

import argparse

from .method import configure_method


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.methods.config import AlignConfig

    configure_method(parser, AlignConfig, "align")
