"""`zeroshift data fetch NAME...`: fetch offline datasets from Debian's packages into $ZEROSHIFT_HOME/data."""
from __future__ import annotations

import argparse

from .table import print_table


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = sub.add_parser("fetch", help="fetch datasets of the offline catalogue (or 'all')")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="fashion-mnist, tuxpaint, openclipart, or all")
    fetch.add_argument("--force", action="store_true", help="fetch again even when already complete (default: off)")
    fetch.set_defaults(run=run_fetch)


def run_fetch(ns: argparse.Namespace) -> int:
    from zeroshift.data.catalogue import FETCHABLE
    from zeroshift.data.fetch import fetch
    from zeroshift.errors import ZeroshiftError

    names = list(FETCHABLE) if "all" in ns.names else ns.names
    unknown = [n for n in names if n not in FETCHABLE]
    if unknown:
        raise ZeroshiftError(f"cannot fetch {', '.join(unknown)}: fetchable are {', '.join(FETCHABLE)}")
    rows = [(n, str(fetch(n, force=ns.force))) for n in names]
    print_table(rows, ["dataset", "path"])
    return 0
