"""The command line a newcomer meets (issue 16): start-up without torch, Ctrl-C as one line and exit 130
(item 8), and one name per concept across commands, every default shown, errors in the command's own
usage (item 10)."""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import colour_folder

from zeroshift.cli.main import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "open_clip", "timm", "transformers")


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **extra}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name ('eval', 'data fetch')."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                full = f"{parser.prog.removeprefix('zeroshift').strip()} {name}".strip()
                found[full] = child
                found.update(_subcommands(child))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings --help shows."""
    return {o for a in parser._actions if a.help is not argparse.SUPPRESS for o in a.option_strings}


# ---------------------------------------------------------------- item 8: start-up and Ctrl-C
def test_help_version_and_argument_errors_import_no_backend(tmp_path):
    """Building the parser, --help, --version, a command's --help, an unknown option, a missing option and
    an option a config check refuses: none imports torch (or any other backend)."""
    script = f"""
import contextlib, io, json, sys
import zeroshift
first = [m for m in {HEAVY!r} if m in sys.modules]
from zeroshift.cli.main import build_parser, main
build_parser()
codes = []
for argv in (["--help"], ["--version"], ["transfer", "--help"], ["eval", "--model", "m", "--bogus"],
             ["eval", "--model", "m"], ["export", "--labels", "a"],
             ["transfer", "--teacher", "t", "--encoder", "e", "--data", "d", "--out", "o", "--data-fraction", "2"],
             ["distill", "--teacher", "t", "--data", "d", "--out", "o", "--loss", "nosuch"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as e:
            codes.append(e.code)
print(json.dumps({{"first": first, "codes": codes, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(
        ZEROSHIFT_HOME=str(tmp_path)), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["codes"] == [0, 0, 0, 2, 2, 2, 2, 2]
    assert got["first"] == [] and got["heavy"] == [], f"imported {got['heavy']}"


def _start(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    """`zeroshift ARGV` as the console script runs it, SIGINT at its default (a shell may have it ignored);
    it prints 'started' on stderr once zeroshift's own code runs."""
    # 'started' is printed inside main's own try (a SIGINT just before it is outside zeroshift's reach)
    script = ("import sys; import zeroshift.cli.main as m; inner = m._main; "
              "m._main = lambda argv: (print('started', file=sys.stderr, flush=True), inner(argv))[1]; "
              "sys.exit(m.main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env(ZEROSHIFT_HOME=str(tmp_path / "home")),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """stderr lines up to and including the first that holds `text`; what came after it in the same read waits
    in proc.pending for _interrupt. Raw reads of the pipe: a buffered readline() can take several lines at once
    and leave the rest where select() no longer sees them."""
    fd, deadline = proc.stderr.fileno(), time.monotonic() + timeout
    lines, pending = [], getattr(proc, "pending", b"")
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            lines.append(line.decode() + "\n")
            if text in lines[-1]:
                proc.pending = pending
                return lines
        ready, _, _ = select.select([fd], [], [], 1.0) if time.monotonic() < deadline else ([], [], [])
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk and (ready or time.monotonic() >= deadline):  # end of the pipe, or out of time
            break
        pending += chunk
    proc.kill()
    raise AssertionError(f"never printed {text!r}: {''.join(lines)}{pending.decode(errors='replace')}")


def _interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        rest = proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, getattr(proc, "pending", b"").decode() + rest


def test_ctrl_c_at_start_up_and_while_serving_is_one_line_and_130(tmp_path):
    serve = ["serve", "--model", "tiny-clip:seed=0", "--port", "0", "--runtime", "torch"]
    proc = _start(serve, tmp_path)  # at once: building the parser, importing torch, loading the model
    _wait_for(proc, "started", timeout=300)
    code, rest = _interrupt(proc)
    assert (code, rest) == (130, "interrupted\n")
    proc = _start(serve, tmp_path)  # serving: uvicorn shuts down quietly, then the one line
    _wait_for(proc, "Application startup complete", timeout=300)  # uvicorn holds its signal handlers from here
    code, rest = _interrupt(proc)
    rest = "".join(line for line in rest.splitlines(True) if "Uvicorn running on" not in line)  # may come late
    assert (code, rest) == (130, "interrupted\n")


# ---------------------------------------------------------------- item 10: one name per concept
def test_data_is_data_everywhere_and_old_names_are_hidden():
    commands = _subcommands(build_parser())
    for name in ("embed", "eval", "transfer", "distill", "align", "quickstart"):
        assert "--data" in _options(commands[name]), name
    for name, parser in commands.items():
        shown = _options(parser) | {a.metavar for a in parser._actions if not a.option_strings}
        assert not shown & {"--dataset", "--datasets", "--pairs", "--eval-dataset", "--align-pairs"}, name
    for name in ("transfer", "distill", "align"):
        assert {"--eval-data", "--precision", "--device", "--runtime"} <= _options(commands[name]), name
    assert "--model" in _options(commands["export"])
    assert [a.dest for a in commands["export"]._actions if not a.option_strings and a.help is not argparse.SUPPRESS] == []


@pytest.mark.parametrize("argv, dest, value, note", [
    (["eval", "--model", "m", "--dataset", "a"], "data", ["a"], "--dataset is deprecated; use --data DATA"),
    (["quickstart", "--datasets", "a", "b"], "data", ["a", "b"], "--datasets is deprecated; use --data DATA"),
    (["quickstart", "--align-pairs", "p"], "align_data", "p", "--align-pairs is deprecated; use --align-data ALIGN_DATA"),
    (["align", "--image", "i", "--text", "t", "--pairs", "p", "q", "--out", "o"], "data", ["p", "q"],
     "--pairs is deprecated; use --data DATA"),
    (["transfer", "--teacher", "t", "--encoder", "e", "--data", "d", "--out", "o", "--eval-dataset", "x"],
     "eval_data", "x", "--eval-dataset is deprecated; use --eval-data EVAL_DATA"),
    (["export", "run:r", "--labels", "a,b", "--out", "f.onnx"], "model", "run:r",
     "the positional MODEL is deprecated; use --model MODEL"),
])
def test_old_names_still_work_with_a_one_line_note(argv, dest, value, note, capsys):
    ns = build_parser().parse_args(argv)
    assert getattr(ns, dest) == value
    assert capsys.readouterr().err == f"zeroshift: warning: {note}\n"


def test_new_names_parse_without_a_note(capsys):
    parser = build_parser()
    ns = parser.parse_args(["export", "--model", "run:r", "--labels", "a,b", "--out", "f.onnx"])
    assert ns.model == "run:r"
    ns = parser.parse_args(["eval", "--model", "m", "--data", "a", "b"])
    assert ns.data == ["a", "b"]
    assert capsys.readouterr().err == ""


def test_eval_evaluates_each_data_spec(home, tmp_path, capsys):
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    one = colour_folder(tmp_path / "one", 2, 20, noise=25, colours=colours)
    two = colour_folder(tmp_path / "two", 3, 20, noise=25, colours=colours)
    out = tmp_path / "results"
    assert main(["eval", "--model", "tiny-clip:seed=0", "--data", f"folder:{one}", f"folder:{two}", "--out", str(out),
                 "--runtime", "torch"]) == 0
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert sorted(r["dataset"] for r in records) == sorted([f"folder:{one}", f"folder:{two}"])
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == 2 and f"folder:{one}" in printed and f"folder:{two}" in printed


def test_tau_is_one_concept_with_one_default():
    from zeroshift.methods.distill import DistillConfig
    from zeroshift.methods.transfer import TransferConfig

    transfer = TransferConfig(teacher="t", encoder="e", data="d", out="o")
    distill = DistillConfig(teacher="t", data=("d",), out="o")
    assert transfer.tau == distill.tau == 30.0
    commands = _subcommands(build_parser())
    helps = [next(a.help for a in commands[c]._actions if "--tau" in a.option_strings) for c in ("transfer", "distill")]
    assert all("(default: 30.0)" in h and "logit scale" in h for h in helps)


def test_every_option_shows_its_default():
    for name, parser in _subcommands(build_parser()).items():
        for action in parser._actions:
            if (action.help is argparse.SUPPRESS or action.required or not action.option_strings
                    or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))):
                continue
            assert "default" in (action.help or ""), f"{name} {action.option_strings[0]}: {action.help!r}"
    commands = _subcommands(build_parser())
    resume = next(a.help for a in commands["transfer"]._actions if "--resume" in a.option_strings)
    assert resume.endswith("(default: on)")


@pytest.mark.parametrize("argv, usage", [
    (["eval", "--model", "m", "--data", "d", "--bogus"], "usage: zeroshift eval "),
    (["transfer", "--teacher", "t", "--encoder", "e", "--data", "d", "--out", "o", "--tua", "3"],
     "usage: zeroshift transfer "),
    (["data", "fetch", "tuxpaint", "--frce"], "usage: zeroshift data fetch "),
])
def test_unknown_option_is_reported_in_the_commands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and "unrecognized arguments: " in err


def test_unknown_option_names_the_nearest_one(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--model", "m", "--data", "d", "--templtes", "x"])
    assert "(did you mean --templates?)" in capsys.readouterr().err


# ---------------------------------------------------------------- the README
def _readme_commands() -> list[list[str]]:
    """Every complete `zeroshift ...` command in the README's code blocks (lines with `...` are excerpts)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "zeroshift" in words[:1] or "-m" in words and words[words.index("-m") + 1:][:1] == ["zeroshift"]:
            start = words.index("zeroshift") + 1
            if "..." not in words:
                commands.append(words[start:])
    return commands


def test_readme_commands_parse_with_the_new_names(capsys):
    commands = _readme_commands()
    assert len(commands) >= 15
    for argv in commands:
        build_parser().parse_args(argv)  # exits on an error
        assert capsys.readouterr().err == "", argv  # no deprecation note: the README uses today's names


def test_readme_table_of_shared_options_matches_the_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### Shared options"):]
    rows = re.findall(r"^\| `(--[a-z-]+)[^|]*` \|[^|]*\| ([a-z, ]+) \|", table.replace("\\|", "/"), re.M)
    assert len(rows) >= 12
    commands = _subcommands(build_parser())
    assert set(commands) >= {name for name, _, _ in COMMANDS}
    for option, listed in rows:
        listed = {c.strip() for c in listed.split(",")}
        having = {name for name, parser in commands.items() if option in _options(parser)}
        assert listed == having, f"{option}: README lists {sorted(listed)}, the commands with it are {sorted(having)}"
