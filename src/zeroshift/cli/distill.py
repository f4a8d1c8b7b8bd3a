"""`zeroshift distill`: a small student image encoder learns a VLM teacher's image embeddings."""
from __future__ import annotations

import argparse

from .method import configure_method


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.methods.config import DistillConfig

    configure_method(parser, DistillConfig, "distill")
