"""Start-up of the command line: wall seconds of the answers that need no model, side by side with Python's own.

Each row is a fresh process, `python -m zeroshift ...` with this Python (what the `zeroshift` script runs),
timed from spawn to exit; all rows run in turns (so load on the machine hits them alike), best and median
of --repeats after one untimed turn:
  python -c pass            the floor: an interpreter that does nothing
  python -c "import torch"  what every answer below used to pay (issue 16, item 8), for scale
  --version, --help, transfer --help, and an argument error (eval without --data: usage and exit 2)
Target (issue 16, item 8): each zeroshift row under 1 s, and none imports torch (tests/test_cli_names.py).

    python bench/startup.py [--repeats 7] [--quick] [--out bench/results]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import in_turns, write_results

HERE = Path(__file__).parent
ZS = [sys.executable, "-m", "zeroshift"]
ROWS = {  # name: (argv, the exit status it must give)
    "python -c pass": ([sys.executable, "-c", "pass"], 0),
    'python -c "import torch"': ([sys.executable, "-c", "import torch"], 0),
    "zeroshift --version": ([*ZS, "--version"], 0),
    "zeroshift --help": ([*ZS, "--help"], 0),
    "zeroshift transfer --help": ([*ZS, "transfer", "--help"], 0),
    "zeroshift eval --model M (argument error)": ([*ZS, "eval", "--model", "tiny-clip:seed=0"], 2),
}
TARGET_S = 1.0


def run(argv: list[str], want: int) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if done.returncode != want:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}, not {want}:\n{done.stderr[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed turns (default: 7)")
    p.add_argument("--quick", action="store_true", help="2 timed turns, a smoke run (default: off)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default: bench/results)")
    args = p.parse_args()
    repeats = 2 if args.quick else args.repeats
    turns = in_turns({name: (lambda a=argv, w=want: run(a, w)) for name, (argv, want) in ROWS.items()},
                     repeats=repeats, warmup=1)
    floor = turns["python -c pass"].best
    rows = [{"command": name, "best_s": t.best, "median_s": t.median, "over_floor_s": t.best - floor,
             "under_target": t.best < TARGET_S if name.startswith("zeroshift") else None}
            for name, t in turns.items()]
    lines = ["# zeroshift start-up", "",
             f"Wall seconds per fresh process, best and median of {repeats} turns after a warm-up, all rows in "
             "turns; `zeroshift` is `python -m zeroshift` with this Python. Target: every zeroshift row under "
             f"{TARGET_S:g} s (none imports torch; tests/test_cli_names.py checks that).", "",
             "| command | best s | median s | over `python -c pass` s | under 1 s |", "|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["under_target"] is None else ("yes" if r["under_target"] else "**no**")
        lines.append(f"| `{r['command']}` | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['over_floor_s']:.3f} | {mark} |")
    write_results(args.out, "startup", "\n".join(lines) + "\n", {"repeats": repeats, "target_s": TARGET_S, "rows": rows})


if __name__ == "__main__":
    main()
