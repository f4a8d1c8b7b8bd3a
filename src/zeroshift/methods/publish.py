"""The end every method's command shares: publish the written run to every rank, evaluate it."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import distributed as dist
from ..data.base import DataSource
from ..models.vlm import VLM
from ..train.checkpoint import Checkpoints


def publish_run(out: Path, runtime: str, checkpoints: Checkpoints, keep_checkpoints: bool,
                eval_source: DataSource | None, card: Callable[[list[dict]], str], progress: bool) -> VLM:
    """After RunWriter.finish: drop the checkpoints (rank 0, unless kept), wait for every rank, load the
    run as a VLM and, with `eval_source`, evaluate it as `zeroshift eval --model run:OUT` would; rank 0
    writes the records to OUT/results and `card(records)` as the model card."""
    from ..models.artefact import load_run, write_card
    from ..zeroshot.evaluate import evaluate

    lead = dist.rank() == 0
    if not keep_checkpoints and lead:
        checkpoints.clear()
    dist.barrier()  # the run folder is published
    vlm = load_run(str(out), runtime=runtime)
    if eval_source is not None:
        records = evaluate(vlm, eval_source, out=out / "results" if lead else None, runtime=runtime,
                           progress=progress and lead)
        if lead:
            write_card(out, card(list(records.values())))
    return vlm
