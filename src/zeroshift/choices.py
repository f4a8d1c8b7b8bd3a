"""The values options can take that the library and the command line share.

Kept free of torch (and of every other import), so `zeroshift --help` builds its parser from the option
dataclasses without loading a backend; the modules that act on a value import its tuple from here.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # train/loop.py: mixed precision of a training run
RUNTIMES = ("torch", "onnx", "auto")  # models/runtime.py: how a frozen image tower runs
BRIDGE_KINDS = ("linear", "mlp")  # models/bridge.py: the kinds of transfer's bridge
