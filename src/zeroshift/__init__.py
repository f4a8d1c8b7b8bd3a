"""zeroshift: move a vision-language model's zero-shot ability into other models, cheaply."""
from __future__ import annotations

from .version import __version__  # noqa: F401  (the public name)

from .errors import ZeroshiftError  # noqa: E402
from .specs import dataset, load  # noqa: E402


def load_features(path):
    """Open a feature cache folder written by `embed`: rows read on demand (`np.asarray` gives them all),
    with labels or captions."""
    from .cache import load_features as _load

    return _load(path)


def predict(model, images, labels, templates=None, runtime="auto", batch_size=32):
    """Rank `labels` for each image with `model` (a spec such as 'conse:effnet-lite2+minilm', or a VLM):
    `[{"image", "ranking": [{"label", "prob"}, ...]}, ...]`, best first; an unreadable image gets
    `{"image", "error"}`. `images`: files or folders; `labels`: a list (at least two) or 'a,b,c'."""
    from .ranking import predict as _predict

    return _predict(model, images, labels, templates=templates, runtime=runtime, batch_size=batch_size)


def evaluate(model, dataset, templates=None, task="auto", out=None, **kwargs):
    """Zero-shot evaluation of `model` on `dataset` (specs or objects): {task: CLIP_benchmark record}.
    Files are written only when `out` names a folder (records there; a run's card is updated too)."""
    from .zeroshot.evaluate import evaluate as _evaluate

    return _evaluate(model, dataset, templates=templates, task=task, out=out, **kwargs)


def embed(model, data, out=None, **kwargs):
    """Embed a data source with a model (specs or objects) into a feature cache; returns Features."""
    from .cache import embed as _embed

    return _embed(model, data, out, **kwargs)


def transfer(config=None, **options):
    """Zoom-shot: bridge a vision encoder into a VLM's joint space; returns the bridged VLM.

    Pass a `methods.transfer.TransferConfig` or its fields as keywords (teacher=, encoder=, data=, out=, ...).
    """
    from .methods.transfer import TransferConfig, transfer as _transfer

    return _transfer(config if config is not None else TransferConfig(**options))


def distill(config=None, **options):
    """Train a small student image encoder on a VLM teacher's image embeddings; returns the distilled VLM.

    Pass a `methods.distill.DistillConfig` or its fields as keywords (teacher=, data=, out=, student=, loss=, ...).
    """
    from .methods.distill import DistillConfig, distill as _distill

    return _distill(config if config is not None else DistillConfig(**options))


def align(config=None, **options):
    """OTTER: a new VLM from a pretrained image tower and a sentence encoder on image-caption pairs.

    Pass a `methods.align.AlignConfig` or its fields as keywords (image=, text=, data=, out=, loss=, ...).
    """
    from .methods.align import AlignConfig, align as _align

    return _align(config if config is not None else AlignConfig(**options))


def shrink(config=None, **options):
    """The cheapest classifier that keeps a teacher's answers on your images: trains every candidate (bridges,
    students), scores each on held-out images against the teacher, times its exports and exports the best
    within the budget; returns the result dict (also OUT/shrink_results.json).

    Pass a `shrinking.ShrinkConfig` or its fields as keywords (teacher=, data=, labels=, out=, candidates=, ...).
    """
    from .shrinking import ShrinkConfig, shrink as _shrink

    return _shrink(config if config is not None else ShrinkConfig(**options))


__all__ = ["__version__", "ZeroshiftError", "load", "dataset", "predict", "evaluate", "load_features", "embed",
           "transfer", "distill", "align", "shrink"]
