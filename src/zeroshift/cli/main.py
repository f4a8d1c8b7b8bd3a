"""The `zeroshift` command: one sub-command per module in this package, each thin over the library."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# (sub-command, module, one-line help)
COMMANDS = [
    ("quickstart", "quickstart", "the main job: shrink the offline teacher on each offline domain and write a report"),
    ("embed", "embed", "embed a data source with a model into a feature cache"),
    ("eval", "evaluate", "zero-shot evaluation in CLIP_benchmark's format"),
    ("predict", "predict", "classify images with free-text labels"),
    ("transfer", "transfer", "Zoom-shot: bridge a vision encoder into a VLM's joint space"),
    ("distill", "distill", "train a small student image encoder on a VLM teacher's image embeddings"),
    ("align", "align", "OTTER: a new VLM from an image tower and a sentence encoder, on noisy pairs"),
    ("shrink", "shrink", "the cheapest classifier that keeps a teacher's answers on your images"),
    ("export", "export", "write a VLM with fixed labels as one ONNX classifier file"),
    ("models", "catalogue", "list the model schemes and what is installed here"),
    ("datasets", "catalogue", "list the data schemes and what is fetched here"),
    ("data", "data", "fetch offline datasets (zeroshift data fetch NAME)"),
    ("serve", "serve", "an HTTP service and web page for served models"),
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with each sub-command's options generated from its config dataclass.

    Building it imports no backend (no torch, torchvision or onnx): the option dataclasses live in light
    modules and each command imports what it needs when it runs, so --help, --version and every argument
    error answer at once."""
    parser = argparse.ArgumentParser(prog="zeroshift", description="Cheap zero-shot image classification.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        mod = importlib.import_module(f"zeroshift.cli.{module}")
        p = sub.add_parser(name, help=help_, description=help_)
        mod.configure(p, name)
        _own_errors(p)
    return parser


def _own_errors(parser: argparse.ArgumentParser) -> None:
    """Mark `parser` and the sub-commands under it as the one that reports options it does not know."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _own_errors(child)


def _unknown(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for arguments nothing took, with the nearest option of the command."""
    import difflib

    known = [o for a in parser._actions if a.help is not argparse.SUPPRESS for o in a.option_strings]
    near = [m for e in extras if e.startswith("--") for m in difflib.get_close_matches(e.split("=")[0], known, 1)]
    return f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {near[0]}?)" if near else "")


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn a ZeroshiftError into one line on stderr with exit code 2;
    Ctrl-C at any moment (imports included) is one line, "interrupted", and exit code 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    from zeroshift import __version__
    from zeroshift.errors import ZeroshiftError

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the command that was given (its usage line), not by the top level
        owner = getattr(args, "_parser", parser)
        owner.error(_unknown(owner, extras))
    if args.version:
        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 1
    if _rank_world()[0] != 0:  # under torchrun rank 0 prints the results; every rank still reports its errors
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        return int(args.run(args) or 0)
    except ZeroshiftError as e:
        rank, world = _rank_world()
        print(f"error: {e}" if world == 1 else f"error (rank {rank}): {e}", file=sys.stderr)
        return 2


def _rank_world() -> tuple[int, int]:
    """(rank, world size): from zeroshift.distributed once a command has imported it (a process group may
    be up), else from torchrun's environment, as that module reads it, so an option error needs no torch."""
    dist = sys.modules.get("zeroshift.distributed")
    if dist is not None:
        return dist.rank(), dist.world_size()

    def env(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        return int(value) if value.lstrip("-").isdigit() else default

    return env("RANK", 0), env("WORLD_SIZE", 1)


if __name__ == "__main__":
    sys.exit(main())
