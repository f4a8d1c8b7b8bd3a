"""`zeroshift quickstart`: the main job on the offline catalogue."""
from __future__ import annotations

import argparse

from .options import command
from .table import print_table


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.quickstart import QuickstartConfig

    command(parser, QuickstartConfig, run)


def run(cfg) -> int:
    from zeroshift.quickstart import HEADERS, quickstart

    result = quickstart(cfg)
    print_table(result["table"], HEADERS, title=f"\nquickstart finished in {result['seconds']} s (* chosen)")
    print(f"report: {result['report']}")
    return 0
