"""`zeroshift shrink`: the cheapest classifier that keeps a teacher's answers on your images."""
from __future__ import annotations

import argparse

from .options import command
from .table import print_table


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    from zeroshift.shrinking.config import ShrinkConfig

    command(parser, ShrinkConfig, run)


def run(cfg) -> int:
    from zeroshift.shrinking import report
    from zeroshift.shrinking.run import shrink

    result = shrink(cfg)
    shown = []
    for r in result["rows"]:
        s, fast = r["scores"], report.ms(r)
        shown.append((r["name"] + (" *" if result["chosen"] and r["name"] == result["chosen"]["name"] else ""),
                      f"{r['parameters'] / 1e6:.2f}M", "-" if fast is None else f"{fast:.2f} ({report.shipped(r)})",
                      f"{s['agreement']:.3f}", f"{s['agreement_vocab']:.3f}", f"{s['cosine']:.3f}",
                      "yes" if r["in_budget"] else r["why_not"]))
    print_table(shown, ["model", "parameters", "ms/image", "agreement", "agreement (vocab)", "cosine", "in budget"],
                title=f"\nshrink finished in {result['seconds']} s (agreement with the teacher on "
                      f"{result['rows'][0]['scores']['images']} held-out images; * chosen)")
    out = cfg.out
    print(f"table: {out}/table.md  plot: {out}/tradeoff.png  json: {out}/shrink_results.json")
    print(f"export: {result['export']} (card: {out}/README.md)" if result["export"] else
          "export: none (no candidate fits the budget and is faster than the teacher)")
    return 0
