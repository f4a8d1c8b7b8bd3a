"""The skeleton every method shares: the run options (RunConfig, defined without torch in config.py so
the CLI parses them cheaply) and the start and end of a run (Run).

A method is its own options (a RunConfig subclass), its data, its task and its losses. `Run` does the
rest: it refuses a taken --out before any work, opens --eval-data, stages the run folder (only rank 0
writes under torchrun), sets up the checkpoints in OUT.ckpt, and at the end writes config.json,
model.safetensors and the card, drops the checkpoints, loads the run back as `zeroshift eval --model
run:OUT` would and evaluates it, beside its teacher on the same data (summary.py says what it got).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from .. import distributed as dist
from ..data.base import DataSource
from ..errors import DataError
from ..models.runtime import recording
from ..models.vlm import VLM
from ..runfolder import RunWriter, write_card
from ..train.checkpoint import Checkpoints, run_checkpoints
from ..version import __version__
from ..paths import user_path
from .config import RunConfig

Card = Callable[[dict, "list[dict] | None"], str]  # (config, evaluation records or None) -> README.md


class Run:
    """One run of a method, from the first check to the evaluated run folder:

        with Run(cfg, "student", identity) as run:
            ... train, writing extra files into run.path ...
            checkpoints = run.checkpoints(data=..., dims=...)
            vlm = run.finish(config, state, card, command="distill", rows=len(rows), history=history)
    """

    def __init__(self, cfg: RunConfig, kind: str, identity: dict[str, Any], need_labels: bool = False) -> None:
        """Everything that can be checked without models is checked here, before any work."""
        from ..specs import dataset
        from ..zeroshot.evaluate import tasks_for

        self.started = time.perf_counter()
        self.cfg, self.kind = cfg, kind
        self.out = user_path(cfg.out).absolute()
        self.lead = dist.rank() == 0  # under torchrun only rank 0 writes; every rank trains and evaluates
        # the writer refuses a taken --out here, before any work
        self.writer = RunWriter(self.out, cfg.overwrite, {"kind": kind, **identity}, active=self.lead)
        self.eval_source: DataSource | None = dataset(cfg.eval_data) if cfg.eval_data else None
        if self.eval_source is not None:
            tasks = tasks_for(self.eval_source)
            if need_labels and "zeroshot_classification" not in tasks:
                raise DataError(f"--eval-data {cfg.eval_data!r} has no class labels to score the model against")
        self._checkpoints: Checkpoints | None = None

    def __enter__(self) -> Run:
        self.writer.__enter__()
        self._recording = recording()  # which runtime each loaded model ran on, for config.json
        self._runtimes = self._recording.__enter__()
        self.path = self.writer.path  # the staging folder: extra files (plots, metrics.jsonl) go here
        return self

    def __exit__(self, *exc: Any) -> None:
        self._recording.__exit__(None, None, None)
        self.writer.__exit__(*exc)

    def checkpoints(self, **identity: Any) -> Checkpoints:
        """OUT.ckpt for this run: its identity is every option that changes the result plus `identity`."""
        options = {k: v for k, v in asdict(self.cfg).items() if k != "quiet"}  # bars change nothing computed
        self._checkpoints = run_checkpoints(self.out, options, self.cfg.checkpoint_every, self.cfg.resume, **identity)
        return self._checkpoints

    def finish(self, config: dict[str, Any], state: dict[str, torch.Tensor], card: Card, progress: bool = True,
               *, command: str, rows: int, history: list[dict] | None = None, teacher: VLM | None = None) -> VLM:
        """Write the run (config.json gets kind, version, resume step, total seconds, every option and the
        training summary of `command` over `rows` rows with the loop's `history`), then publish it: drop
        the checkpoints, load it back and, with --eval-data, evaluate it as `zeroshift eval --model
        run:OUT` would (records in OUT/results, results in the card), and `teacher` on the same data
        through the same feature cache (records in OUT/results/teacher), the two side by side in
        OUT/results/summary.json (see summary.py)."""
        from ..cache import embed
        from ..runs import load_run
        from ..zeroshot.evaluate import evaluate
        from . import summary

        seconds = {**config.pop("seconds", {}), "total": round(time.perf_counter() - self.started, 2)}
        resumed = None if self._checkpoints is None else self._checkpoints.resumed_step
        config = {"kind": self.kind, "zeroshift_version": __version__, **config, "resumed_from_step": resumed,
                  "seconds": seconds, "options": asdict(self.cfg),  # options.runtime as given ('auto') ...
                  "runtime_used": dict(getattr(self, "_runtimes", {})),  # ... and what each loaded model ran on
                  "summary": summary.training(command, rows, history or [], seconds["total"], resumed)}
        self.writer.finish(config, state, card(config, None))
        if self._checkpoints is not None and not self.cfg.keep_checkpoints and self.lead:
            self._checkpoints.clear()
        dist.barrier()  # the run folder is published
        vlm = load_run(str(self.out), runtime=self.cfg.runtime)
        records = None
        if self.eval_source is not None:
            results, show = self.out / "results", progress and self.lead
            for role, model in (("model", vlm), ("teacher", teacher)):  # named bars; evaluate reads the caches
                if model is not None:
                    embed(model, self.eval_source, runtime=self.cfg.runtime, progress=show, role=role)
            records = evaluate(vlm, self.eval_source, out=results if self.lead else None, runtime=self.cfg.runtime,
                               progress=show)
            theirs = None if teacher is None else evaluate(
                teacher, self.eval_source, out=results / "teacher" if self.lead else None, runtime=self.cfg.runtime,
                progress=show)
            if self.lead:
                summary.write_evaluation(summary.evaluation(records, theirs, self.eval_source.spec, vlm.spec,
                                                            None if teacher is None else teacher.spec), results)
        if self.lead:  # the card again, with the results and the loaded model's per-image and per-label-set cost
            write_card(self.out, card(config, None if records is None else list(records.values())), cost=vlm.cost())
        return vlm
