"""`zeroshift quickstart`: the main job on the offline catalogue."""
from __future__ import annotations

import argparse

from .options import add_options, from_args
from .table import print_table


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.quickstart import QuickstartConfig

    add_options(parser, QuickstartConfig)
    parser.set_defaults(run=lambda ns: run(from_args(QuickstartConfig, ns)))


def run(cfg) -> int:
    from zeroshift.quickstart import quickstart
    from zeroshift.report import HEADERS, display

    result = quickstart(cfg)
    print_table(display(result["table"]), HEADERS, title=f"\nquickstart finished in {result['seconds']} s")
    print(f"report: {result['report']}")
    return 0
