"""The `zeroshift` command: one sub-command per module in this package, each thin over the library."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# (sub-command, module, one-line help)
COMMANDS = [
    ("quickstart", "quickstart", "evaluate the offline teacher on the offline catalogue and write a report"),
    ("embed", "embed", "embed a data source with a model into a feature cache"),
    ("eval", "evaluate", "zero-shot evaluation in CLIP_benchmark's format"),
    ("predict", "predict", "classify images with free-text labels"),
    ("transfer", "transfer", "Zoom-shot: bridge a vision encoder into a VLM's joint space"),
    ("distill", "distill", "train a small student image encoder on a VLM teacher's image embeddings"),
    ("align", "align", "OTTER: a new VLM from an image tower and a sentence encoder, on noisy pairs"),
    ("export", "export", "write a VLM with fixed labels as one ONNX classifier file"),
    ("models", "catalogue", "list the model schemes and what is installed here"),
    ("datasets", "catalogue", "list the data schemes and what is fetched here"),
    ("data", "data", "fetch offline datasets (zeroshift data fetch NAME)"),
    ("serve", "serve", "an HTTP service and web page for served models"),
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with each sub-command's options generated from its config dataclass."""
    parser = argparse.ArgumentParser(prog="zeroshift", description="Cheap zero-shot image classification.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        mod = importlib.import_module(f"zeroshift.cli.{module}")
        p = sub.add_parser(name, help=help_, description=help_)
        mod.configure(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn a ZeroshiftError into one line on stderr with exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    from zeroshift import __version__
    from zeroshift.errors import ZeroshiftError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 1
    from zeroshift import distributed as dist

    if dist.rank() != 0:  # under torchrun rank 0 prints the results; every rank still reports its errors
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        return int(args.run(args) or 0)
    except ZeroshiftError as e:
        print(f"error: {e}" if not dist.is_distributed() else f"error (rank {dist.rank()}): {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
