"""The installed, unmodified CLIP_benchmark agrees with zeroshift's evaluate() on the same tiny-clip VLM."""
from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import colour_pixels, tiny_vlm

pytest.importorskip("clip_benchmark")
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval  # noqa: E402

from zeroshift.data.memory import ArraySource  # noqa: E402
from zeroshift.data.templates import get_templates  # noqa: E402
from zeroshift.integrations.clip_benchmark import adapt, register  # noqa: E402
from zeroshift.models.tiny import create  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
N = 48


def images() -> np.ndarray:
    return colour_pixels(N, 32, 30, seed=1)  # [N, 32, 32, 3]


def half_right_labels(vlm, pixels: np.ndarray) -> np.ndarray:
    """Labels that tiny-clip gets about half right: its one-prompt prediction on even rows, the next
    class on odd rows. (Scored with 18 CIFAR templates, predictions differ from this one-prompt guess.)"""
    x = torch.stack([vlm.image_transform(ArraySource(pixels, "x").load_image(i)) for i in range(N)])
    text = F.normalize(vlm.encode_text([f"a photo of a {c}." for c in COLOURS]), dim=-1)  # [C, d]
    guess = (F.normalize(vlm.encode_image(x), dim=-1) @ text.T).argmax(1).numpy()  # [N]
    return np.where(np.arange(N) % 2 == 0, guess, (guess + 1) % len(COLOURS))


class TorchDataset(torch.utils.data.Dataset):
    """What CLIP_benchmark iterates: (transformed image, target), with `.classes`."""

    def __init__(self, source: ArraySource, transform, targets):
        self.source, self.transform, self.targets, self.classes = source, transform, targets, source.classes

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.transform(self.source.load_image(i)), self.targets[i]


def test_classification_matches_clip_benchmark(home, tmp_path):
    from zeroshift.zeroshot.evaluate import evaluate

    vlm, pixels = tiny_vlm(), images()
    source = ArraySource(pixels, "test:colours", labels=half_right_labels(vlm, pixels), classes=COLOURS)
    ours = evaluate(vlm, source, templates="cifar10", out=tmp_path / "results", runtime="torch", progress=False)
    ours = ours["zeroshot_classification"]["metrics"]

    model, transform, tokenizer = adapt(vlm)
    loader = torch.utils.data.DataLoader(TorchDataset(source, transform, source.labels.tolist()), batch_size=16)
    theirs = zeroshot_classification.evaluate(
        model, loader, tokenizer, COLOURS, get_templates("cifar10"), device="cpu", amp=False)

    assert 0.2 < theirs["acc1"] < 0.8, "the tiny data should give a non-degenerate accuracy"
    assert theirs["mean_per_class_recall"] != theirs["acc1"]
    assert ours["acc1"] == theirs["acc1"]
    assert ours["acc5"] == theirs["acc5"]
    assert ours["mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-12)


def test_retrieval_matches_clip_benchmark(home):
    from zeroshift.zeroshot.evaluate import evaluate

    vlm, pixels = tiny_vlm(), images()
    rng = np.random.default_rng(2)
    captions = [f"a {COLOURS[c]} tile, number {i}" for i, c in enumerate(rng.integers(0, 6, size=N))]
    source = ArraySource(pixels, "test:captions", captions=captions)
    ours = evaluate(vlm, source, out=None, runtime="torch", progress=False)["zeroshot_retrieval"]["metrics"]

    model, transform, tokenizer = adapt(vlm)
    pairs = [(transform(source.load_image(i)), [captions[i]]) for i in range(N)]
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=16, collate_fn=lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b]))
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])

    assert set(theirs) == set(ours)
    for key, value in theirs.items():  # theirs is a float32 mean; one query more or less moves it by 1/48
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert 0 < theirs["image_retrieval_recall@10"] < 1


def test_tokenizer_round_trips_strings():
    model, _, tokenizer = adapt(create("seed=0"))
    ids = tokenizer(["a cat", "a dog", "a cat"])
    assert ids.dtype == torch.long and ids.tolist() == [0, 1, 0]
    assert tokenizer.decode(tokenizer("a dog")) == ["a dog"]
    assert torch.equal(model.encode_text(ids), model.vlm.encode_text(["a cat", "a dog", "a cat"]))


def test_registered_model_type_loads_through_clip_benchmark(monkeypatch):
    from clip_benchmark import models

    monkeypatch.setattr(models, "TYPE2FUNC", dict(models.TYPE2FUNC))  # undone after the test
    monkeypatch.setattr(models, "MODEL_TYPES", list(models.MODEL_TYPES))
    register()
    assert "zeroshift" in models.MODEL_TYPES
    model, transform, tokenizer = models.load_clip("zeroshift", "tiny-clip:seed=3", "", cache_dir=None, device="cpu")
    out = model.encode_image(transform(ArraySource(images()[:1], "x").load_image(0))[None])
    assert out.shape == (1, 32) and model.encode_text(tokenizer(["a red tile"])).shape == (1, 32)


def test_clip_benchmark_build_reads_our_records(home, tmp_path):
    try:
        from clip_benchmark.cli import main_build
    except ModuleNotFoundError as e:  # clip-benchmark 1.6.2's cli imports `requests` without declaring it
        pytest.skip(f"clip_benchmark.cli cannot be imported here: {e}")

    from zeroshift.zeroshot.evaluate import evaluate

    vlm, pixels = tiny_vlm(), images()
    source = ArraySource(pixels[:12], "test:small", labels=np.arange(12) % 6, classes=COLOURS)
    record = evaluate(vlm, source, out=tmp_path / "results", runtime="torch", progress=False)["zeroshot_classification"]
    main_build(argparse.Namespace(files=[str(tmp_path / "results")], output=str(tmp_path / "bench.csv")))
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["dataset"] == "test:small"
    assert float(rows[0]["acc1"]) == record["metrics"]["acc1"]
    assert rows[0]["model_fullname"] == f"{vlm.spec} "
