"""What the training commands (transfer, distill, align) share: options generated from the method's
config dataclass, and after the run its summary (training figures, and with --eval-data the model's
score beside its teacher's)."""
from __future__ import annotations

import argparse
import importlib
from typing import Any

from .options import command


def configure_method(parser: argparse.ArgumentParser, config: type, method: str) -> None:
    """Add the options of `config` (a torch-free dataclass); when parsed, import `zeroshift.methods.<method>`
    and run its function of that name, then print its summary."""
    command(parser, config, lambda cfg: run_method(method, cfg))


def run_method(method: str, cfg: Any) -> int:
    from zeroshift.methods.summary import lines
    from zeroshift.paths import user_path

    train = getattr(importlib.import_module(f"zeroshift.methods.{method}"), method)
    train(cfg)
    for line in lines(cfg.out):
        print(line)
    if cfg.eval_data:
        teacher = (user_path(cfg.out) / "results" / "teacher").is_dir()
        print(f"records: {cfg.out}/results" + (" (the teacher's in results/teacher)" if teacher else ""))
    print(f"run: {cfg.out}  (use it as --model run:{cfg.out})")
    return 0
