"""What the training commands (transfer, distill, align) share: options generated from the method's
config dataclass, and after the run its summary (training figures, and with --eval-dataset the model's
score beside its teacher's)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .options import command


def configure_method(parser: argparse.ArgumentParser, config: type, train: Callable[[Any], Any]) -> None:
    """Add the options of `config` and run `train(config)` then print its summary when parsed."""
    command(parser, config, lambda cfg: run_method(train, cfg))


def run_method(train: Callable[[Any], Any], cfg: Any) -> int:
    from zeroshift.methods.summary import lines
    from zeroshift.paths import user_path

    train(cfg)
    for line in lines(cfg.out):
        print(line)
    if cfg.eval_dataset:
        teacher = (user_path(cfg.out) / "results" / "teacher").is_dir()
        print(f"records: {cfg.out}/results" + (" (the teacher's in results/teacher)" if teacher else ""))
    print(f"run: {cfg.out}  (use it as --model run:{cfg.out})")
    return 0
