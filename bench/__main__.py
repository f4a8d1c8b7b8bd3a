"""Run the benchmark suite, one script after another, and write OUT/README.md with every table and plot.

Each benchmark is its own process (`python bench/NAME.py [--quick] --out OUT`, with this Python), never two
at once, since they time things. Its output streams through; its exit status and wall seconds are kept. A
missing or failing script is recorded (with its last output lines) and the suite goes on; the exit status is
nonzero if any failed. README.md (written last, atomically) describes the run and the machine, sums up the
benchmarks and inlines each one's OUT/NAME.md and plots (OUT/NAME*.png) written by this run.

    python -m bench [--quick] [--only NAME ...] [--skip NAME ...] [--out DIR]     # from the repository root
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = ("embed_throughput", "transfer", "distill", "align", "zeroshot_speed", "memory", "scaling", "costs",
         "diffusion_cost", "projection", "serve", "integrity", "startup", "export", "loop_speed", "teaching",
         "shrink")
GPU_ONLY = ("costs", "diffusion_cost")  # per-item costs at the papers' scale: measured on a CUDA GPU
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024
LINK = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))|(<img\b[^>]*?\bsrc=\")([^\"]+)(\")")


@dataclass(frozen=True)
class Outcome:
    """What one benchmark run left: exit status (None: not run), seconds, output tail, start time."""

    name: str
    returncode: int | None
    seconds: float
    started: float
    load: tuple[float, float]
    tail: list[str] = field(default_factory=list)
    note: str = ""
    skipped: bool = False  # a GPU benchmark on a machine without one: its last results are shown, marked

    @property
    def ok(self) -> bool:
        return self.returncode == 0 or self.skipped


def takes_quick(script: Path) -> bool:
    """Whether a benchmark script lists a --quick option in its --help (those without get nothing in its place)."""
    try:
        done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                              cwd=HERE.parent, check=False)
    except subprocess.TimeoutExpired:
        return False
    return re.search(r"(^|\s)--quick\b", done.stdout) is not None


def run_one(name: str, quick: bool, out: Path, cuda: bool, reuse: bool = False) -> Outcome:
    """Run bench/NAME.py as a subprocess, streaming its output; keep its status, seconds and last lines.
    With `reuse`, run nothing and show the results its last run left in OUT."""
    script = HERE / f"{name}.py"
    started, load0 = time.time(), os.getloadavg()[0]
    if reuse:
        when = max((written(p) for p in sorted(out.glob(f"{name}*.md"))), default=None)
        print(f"== {name}: not run (--reuse)", flush=True)
        return Outcome(name, None, 0.0, started, (load0, load0), skipped=True,
                       note="Not run by this invocation (--reuse): the results below are from its last run"
                            + (f", written {when:%Y-%m-%d %H:%M} UTC." if when else "; there are none."))
    if name in GPU_ONLY and not cuda:
        print(f"== {name}: skipped, needs a CUDA GPU", flush=True)
        return Outcome(name, None, 0.0, started, (load0, load0), skipped=True,
                       note="Skipped: this machine has no CUDA GPU. The results below are from this benchmark's "
                            "last run on one (their own header names the device and date).")
    if not script.is_file():
        print(f"== {name}: {script} does not exist", flush=True)
        return Outcome(name, None, 0.0, started, (load0, load0), note=f"bench/{name}.py does not exist")
    cmd = [sys.executable, str(script), *(["--quick"] if quick and takes_quick(script) else []), "--out", str(out)]
    print(f"== {name}: {shlex.join([Path(cmd[0]).name, *cmd[1:]])}", flush=True)
    t0 = time.perf_counter()
    tail = bytearray()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=HERE.parent,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            while chunk := proc.stdout.read1(4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                tail = (tail + chunk)[-TAIL_BYTES:]
        except KeyboardInterrupt:
            proc.terminate()
            raise
    seconds = time.perf_counter() - t0
    lines = [s for s in re.split(r"[\r\n]+", tail.decode("utf-8", "replace")) if s.strip()][-TAIL_LINES:]
    print(f"== {name}: exit {proc.returncode} after {seconds:.0f} s", flush=True)
    return Outcome(name, proc.returncode, seconds, started, (load0, os.getloadavg()[0]), lines)


def written(path: Path) -> datetime.datetime:
    """When a results file was written: its last commit if git tracks it unchanged, else its mtime."""
    done = subprocess.run(["git", "log", "-1", "--format=%cI", "--", path.name], cwd=path.parent, capture_output=True,
                          text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=path.parent, capture_output=True,
                           text=True, check=False)
    if done.returncode == 0 and done.stdout.strip() and not dirty.stdout.strip():
        return datetime.datetime.fromisoformat(done.stdout.strip()).astimezone(datetime.UTC)
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)


def fresh(path: Path, since: float) -> bool:
    """Whether `path` exists and was written at or after `since` (by this run, not an earlier one)."""
    return path.is_file() and path.stat().st_mtime >= since - 1


def relink(text: str, src: Path, dest: Path) -> str:
    """Image links of a markdown file in folder `src` rewritten to work from folder `dest`."""
    def fix(target: str) -> str:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            return target  # a URL or an anchor
        path = Path(target) if Path(target).is_absolute() else src / target
        return os.path.relpath(path.resolve(), dest.resolve()) if path.exists() else target

    def sub(m: re.Match) -> str:
        if m.group(1):
            return m.group(1) + fix(m.group(2)) + m.group(3)
        return m.group(4) + fix(m.group(5)) + m.group(6)

    return LINK.sub(sub, text)


def demote(text: str, levels: int) -> str:
    """Markdown headings pushed down `levels` levels (outside code fences)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,6}\s", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def results(o: Outcome, out: Path) -> list[Path]:
    """The markdown files a benchmark wrote in this run (a skipped one: its last run's): OUT/NAME.md, then any
    OUT/NAME*.md (costs-<tag>-<precision>.md)."""
    found = [p for p in sorted(out.glob(f"{o.name}*.md")) if o.skipped or fresh(p, o.started)]
    return sorted(found, key=lambda p: p.name != f"{o.name}.md")


def section(o: Outcome, out: Path) -> list[str]:
    """A benchmark's part of README.md: its own results files and plots, or why there are none."""
    mds = results(o, out)
    lines = ["", f"## {o.name}", ""]
    status = ("not run" if "--reuse" in o.note else "skipped") if o.skipped else "missing" if o.returncode is None else f"exit {o.returncode}"
    links = ", ".join(f"[{md.name}]({md.name})" for md in mds)
    lines.append(f"`bench/{o.name}.py`: {status}, {o.seconds:.0f} s." + (f" Results: {links}." if mds else ""))
    shown = ""
    for md in mds:
        text = relink(md.read_text(encoding="utf-8"), md.parent, out)
        lines += ["", demote(text, 2)]
        shown += text
    stale = out / f"{o.name}.md"
    if not mds and stale.is_file():
        lines += ["", f"This run did not write {stale.name}; the file there is from an earlier run and is not shown."]
    linked = {Path(m.group(2) or m.group(5)).name for m in LINK.finditer(shown)}
    plots = [p for p in sorted(out.glob(f"{o.name}*.png")) if (o.skipped or fresh(p, o.started)) and p.name not in linked]
    for p in plots:
        lines += ["", f"![{p.stem}]({p.name})"]
    if o.skipped:
        lines[4:4] = [o.note, ""]
    if not o.ok:
        lines += ["", o.note or "Last output lines:", ""]
        if o.tail:
            lines += ["```", *o.tail, "```"]
    return lines


def readme(outcomes: list[Outcome], out: Path, argv: list[str], started: datetime.datetime, total: float,
           machine: str) -> str:
    failed = [o.name for o in outcomes if not o.ok]
    lines = [
        "# zeroshift benchmarks", "",
        (f"Produced by `{shlex.join(['python', '-m', 'bench', *argv])}` on {started:%Y-%m-%d %H:%M} UTC in "
        f"{total / 60:.1f} minutes: each benchmark ran as its own process, one after another. Every ratio in a "
        "section below was measured side by side within that benchmark's own run."), "",
        (f"Machine: {machine}. The table gives the 1-min load average when each benchmark started and ended: a "
        "benchmark adds up to the threads it runs on its own; more means other work shared the machine."), "",
        ("All benchmarks succeeded." if not failed else f"**Failed: {', '.join(failed)}** (see below)."), "",
        "| bench | status | seconds | load start / end | results |", "|---|---|---|---|---|"]
    for o in outcomes:
        status = ("reused" if "--reuse" in o.note else "skipped (no GPU)") if o.skipped else "ok" if o.ok else (
            "missing" if o.returncode is None else f"failed (exit {o.returncode})")
        link = ", ".join(f"[{md.name}]({md.name})" for md in results(o, out)) or "-"
        lines.append(f"| [{o.name}](#{o.name}) | {status} | {o.seconds:.0f} | {o.load[0]:.1f} / {o.load[1]:.1f} | "
                     f"{link} |")
    for o in outcomes:
        lines += section(o, out)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark that has it")
    p.add_argument("--only", nargs="+", choices=SUITE, metavar="NAME", help=f"run only these ({', '.join(SUITE)})")
    p.add_argument("--skip", nargs="+", choices=SUITE, default=[], metavar="NAME", help="leave these out")
    p.add_argument("--reuse", nargs="+", choices=SUITE, default=[], metavar="NAME",
                   help="do not run these; show the results their last run left in the results folder")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default bench/results)")
    a = p.parse_args(argv)
    names = [n for n in SUITE if (not a.only or n in a.only) and n not in a.skip]
    if not names:
        p.error("--only and --skip leave no benchmark to run")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.datetime.now(datetime.UTC), time.perf_counter()
    import torch

    outcomes = [run_one(name, a.quick, out, torch.cuda.is_available(), name in a.reuse) for name in names]
    total = time.perf_counter() - t0
    sys.path.insert(0, str(HERE))
    from common import machine

    from zeroshift.io import write_text

    write_text(out / "README.md", readme(outcomes, out, argv, started, total, machine()))
    print("\n" + "\n".join(f"{o.name:18s} {'ok' if o.ok else 'FAILED':7s} {o.seconds:7.0f} s" for o in outcomes))
    print(f"wrote {out / 'README.md'}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
