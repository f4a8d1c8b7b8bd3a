"""`zeroshift models` and `zeroshift datasets`: what is known, and what is usable here."""
from __future__ import annotations

import argparse
import json

from zeroshift.errors import MissingBackend
from zeroshift.specs import DATA_SCHEMES, MODEL_SCHEMES, Scheme, check_backend

from .table import print_table


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    parser.set_defaults(run=run_models if name == "models" else run_datasets)


def _installed(scheme: Scheme) -> str:
    try:
        check_backend(scheme)
        return "yes"
    except MissingBackend:
        return f"no: pip install {scheme.install}"


def run_models(ns: argparse.Namespace) -> int:
    rows = [(s.name, s.kind, _installed(s), s.example, s.help) for s in MODEL_SCHEMES.values()]
    if ns.json:
        print(json.dumps([dict(zip(["scheme", "kind", "installed", "example", "help"], r)) for r in rows], indent=2))
    else:
        print_table(rows, ["scheme", "kind", "installed", "example", "what"])
    return 0


def run_datasets(ns: argparse.Namespace) -> int:
    from zeroshift.data.catalogue import catalogue_status

    status = {s["name"]: s for s in catalogue_status()}
    rows = []
    for s in DATA_SCHEMES.values():
        here = _installed(s)
        if s.name in status:
            st = status[s.name]
            here = f"fetched, {st['rows']} rows" if st["fetched"] else f"no: zeroshift data fetch {s.name}"
        rows.append((s.name, here, s.example, s.help))
    if ns.json:
        print(json.dumps([dict(zip(["scheme", "here", "example", "help"], r)) for r in rows], indent=2))
    else:
        print_table(rows, ["scheme", "here", "example", "what"])
    return 0
