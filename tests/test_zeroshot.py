"""Zero-shot classifier, metrics, templates, records and evaluate() on tiny-clip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import colour_pixels, tiny_vlm

from zeroshift.data.memory import ArraySource
from zeroshift.data.templates import dataset_key, get_templates, imagenet_classes, template_sets
from zeroshift.errors import DataError, ZeroshiftError
from zeroshift.zeroshot.classifier import check_classnames, classify, zeroshot_weights
from zeroshift.zeroshot.labels import parse_labels
from zeroshift.zeroshot.metrics import (
    accuracy, caption_groups, classification_metrics, flat_hit, mean_per_class_recall, retrieval_metrics,
)
from zeroshift.zeroshot.records import make_record, record_filename, split_model_spec, write_record

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


# ---------------------------------------------------------------- metrics, by hand


def test_accuracy_topk_clipped_to_classes():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    targets = torch.tensor([0, 2, 0, 1])
    # top-1 hits: rows 0 only; top-2 hits: row 0, row 1 (2 is second); row 2: top2 = {2, 1}; row 3: {0, 2}
    assert accuracy(logits, targets, (1, 2)) == [0.25, 0.5]
    assert accuracy(logits, targets, (5,)) == [1.0]  # k clipped to 3 classes


def test_mean_per_class_recall_is_balanced_accuracy_over_present_classes():
    from sklearn.metrics import balanced_accuracy_score

    targets = np.array([0, 0, 0, 1, 3, 3])
    preds = np.array([0, 0, 1, 1, 2, 3])  # class 2 predicted but absent: ignored
    expected = (2 / 3 + 1 + 1 / 2) / 3
    assert mean_per_class_recall(preds, targets) == pytest.approx(expected)
    with pytest.warns(UserWarning):  # sklearn warns about the absent class it ignores, as we do
        assert balanced_accuracy_score(targets, preds) == pytest.approx(expected)


def test_flat_hit_and_large_label_sets():
    logits = torch.arange(12.0).repeat(4, 1)  # every row ranks 11, 10, 9, ... 0
    targets = torch.tensor([11, 10, 7, 0])  # ranks 1, 2, 5, 12
    assert flat_hit(logits, targets) == {"flat_hit@1": 0.25, "flat_hit@2": 0.5, "flat_hit@5": 0.75,
                                         "flat_hit@10": 0.75}
    assert "flat_hit@1" not in classification_metrics(logits, targets)
    big = torch.randn(20, 100)
    m = classification_metrics(big, big.argmax(1))
    assert m["flat_hit@1"] == m["acc1"] == 1.0 and m["mean_per_class_recall"] == 1.0


def test_retrieval_recall_by_hand():
    # scores [texts, images]
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.2, 0.6, 0.5]])
    positives = torch.eye(3, dtype=torch.bool)
    m = retrieval_metrics(scores, positives, ks=(1, 2))
    # text->image top-1: t0->i0 yes, t1->i0 no, t2->i1 no;  top-2: t1 {0,1} yes, t2 {1,2} yes
    assert m["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["image_retrieval_recall@2"] == 1.0
    # image->text (columns): i0 -> t0 yes; i1 -> t1 (0.7) vs t2 (0.6): yes; i2 -> t2 yes
    assert m["text_retrieval_recall@1"] == 1.0


def test_duplicate_captions_are_one_text_with_several_images():
    texts, positives = caption_groups(["a dog", "a cat", "a dog"])
    assert texts == ["a dog", "a cat"]
    assert positives.tolist() == [[True, False, True], [False, True, False]]
    scores = torch.tensor([[0.1, 0.0, 0.9], [0.2, 1.0, 0.0]])  # [texts, images]
    # "a dog" ranks image 2 first (a positive), "a cat" image 1; image 0 ranks "a cat" first: a miss
    m = retrieval_metrics(scores, positives, ks=(1,))
    assert m["image_retrieval_recall@1"] == 1.0 and m["text_retrieval_recall@1"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- classifier


class TableVLM(torch.nn.Module):
    """encode_text from a fixed random table keyed by string (no tower, so the recipe is visible)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dim, self.table, self.gen = dim, {}, torch.Generator().manual_seed(0)

    def encode_text(self, texts):
        return torch.stack([self.table.setdefault(t, torch.randn(self.dim, generator=self.gen) * 3) for t in texts])


def test_weights_are_normalised_mean_of_normalised_prompt_embeddings():
    vlm, templates = TableVLM(), ["a {c}.", "the {c}!", "{c} photo"]
    w = zeroshot_weights(vlm, ["cat", "dog"], templates, batch_size=2)  # batches cross classes
    for i, c in enumerate(["cat", "dog"]):
        e = F.normalize(vlm.encode_text([t.format(c=c) for t in templates]), dim=-1).mean(0)
        assert torch.allclose(w[i], e / e.norm(), atol=1e-6)
    assert w.shape == (2, 8) and torch.allclose(w.norm(dim=1), torch.ones(2))
    img = torch.randn(5, 8)
    assert torch.allclose(classify(img, w), 100 * F.normalize(img, dim=-1) @ w.T)


@pytest.mark.parametrize("names", [[], ["cat", "  "], ["cat", ""], ["Cat", "dog", "cat "]])
def test_bad_class_names_are_one_line_errors(names):
    with pytest.raises(ZeroshiftError) as e:
        zeroshot_weights(TableVLM(), names, ["a {c}."])
    assert "\n" not in str(e.value)


def test_class_names_are_stripped_and_templates_need_the_slot():
    assert check_classnames([" cat", "dog "]) == ["cat", "dog"]
    with pytest.raises(ZeroshiftError, match="{c}"):
        zeroshot_weights(TableVLM(), ["cat"], ["a photo"])


def test_label_text_splits_at_newlines_else_commas_and_reads_files_only_when_asked(tmp_path):
    assert parse_labels("cat, dog ,, a red bird") == ["cat", "dog", "a red bird"]
    assert parse_labels("cat, striped\r\n\ndog\n") == ["cat, striped", "dog"]  # a newline: lines, commas kept
    assert parse_labels(" , ,") == [] and parse_labels("") == []
    path = tmp_path / "labels.txt"
    path.write_text("tabby cat\ngolden dog\n", encoding="utf-8")
    assert parse_labels(str(path), files=True) == ["tabby cat", "golden dog"]
    assert parse_labels(str(path)) == [str(path)]  # the service never opens a file
    with pytest.raises(ZeroshiftError, match="does not exist"):  # a typo is not one label (issue 16, item 11)
        parse_labels(str(tmp_path / "absent.txt"), files=True)


# ---------------------------------------------------------------- templates


def test_packaged_template_sets_and_dataset_keys():
    assert {"imagenet", "cifar10", "cifar100", "mnist", "default"} <= set(template_sets())
    assert len(get_templates("imagenet")) == 80 and len(get_templates("cifar10")) == 18
    assert len(get_templates("cifar100")) == 18 and get_templates("imagenet1k") == get_templates("imagenet")
    assert dataset_key("fashion-mnist:test") == "fashion-mnist"
    assert dataset_key("hf:uoft-cs/cifar10:test") == "cifar10" and dataset_key("torchvision:MNIST") == "mnist"
    assert get_templates(None, "fashion-mnist:test") == get_templates("imagenet")  # CLIP_benchmark's fallback
    assert get_templates(None, "torchvision:CIFAR100:test") == get_templates("cifar100")
    assert get_templates(None, "mnist") == ['a photo of the number: "{c}".']
    assert get_templates(None, "tuxpaint") == get_templates("default") == get_templates(None, None)
    assert "a photo of a {c}." in get_templates("default")
    assert all("{c}" in t for s in template_sets() for t in get_templates(s))


def test_template_files(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("a photo of a {c}.\n\n  a drawing of a {}. \n")
    assert get_templates(str(txt)) == ["a photo of a {c}.", "a drawing of a {c}."]
    js = tmp_path / "t.json"
    js.write_text(json.dumps(["itap of a {c}."]))
    assert get_templates(str(js)) == ["itap of a {c}."]
    keyed = tmp_path / "keyed.json"  # CLIP_benchmark's --custom_template_file form
    keyed.write_text(json.dumps({"cifar10": ["a {c}."], "mnist": ["digit {c}"]}))
    assert get_templates(str(keyed), "hf:cifar10:test") == ["a {c}."]
    for content, msg in [("\n  \n", "no templates"), ("a photo of a cat.\n", "must contain"),
                         ("a {c} in {place}\n", "must contain")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(content)
        with pytest.raises(ZeroshiftError, match=msg) as e:
            get_templates(str(bad))
        assert "\n" not in str(e.value)
    with pytest.raises(ZeroshiftError, match="no entry"):
        get_templates(str(keyed), "tuxpaint")
    with pytest.raises(ZeroshiftError, match="neither a template set"):
        get_templates("no-such-set")


def test_imagenet_vocabulary_is_a_valid_label_set():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench"
    assert check_classnames(names) == names  # distinct under case folding


# ---------------------------------------------------------------- records


def test_record_schema_and_name(tmp_path):
    assert split_model_spec("openclip:ViT-B-32@laion2b_s34b_b79k") == ("openclip:ViT-B-32", "laion2b_s34b_b79k")
    assert split_model_spec("tiny-clip:seed=0") == ("tiny-clip:seed=0", "")
    rec = make_record("fashion-mnist:test", "openclip:ViT-B-32@laion2b", "zeroshot_classification", {"acc1": 0.5})
    assert rec == {"dataset": "fashion-mnist:test", "model": "openclip:ViT-B-32", "pretrained": "laion2b",
                   "task": "zeroshot_classification", "metrics": {"acc1": 0.5}, "language": "en"}
    assert record_filename(rec) == "fashion-mnist_test_laion2b_openclip_ViT-B-32_en_zeroshot_classification.json"
    path = write_record(rec, tmp_path / "out")
    assert json.loads(path.read_text()) == rec and [p.name for p in (tmp_path / "out").iterdir()] == [path.name]
    long = make_record("folder:" + "/very/long" * 40, "run:x", "zeroshot_retrieval", {})
    assert len(record_filename(long)) < 200


# ---------------------------------------------------------------- evaluate() on tiny-clip


def colour_source(n: int = 48, spec: str = "test:colours", captions: bool = False) -> ArraySource:
    rng = np.random.default_rng(0)
    images = colour_pixels(n, 32, 30, rng)  # [n, 32, 32, 3]
    labels = rng.integers(0, len(COLOURS), size=n)
    caps = [f"a {COLOURS[l]} square, number {i}" for i, l in enumerate(labels)] if captions else None
    return ArraySource(images, spec, labels=labels, classes=COLOURS, captions=caps)


def count_image_batches(vlm) -> list[int]:
    calls: list[int] = []
    vlm.image.register_forward_hook(lambda mod, args, out: calls.append(len(args[0])))
    return calls


def test_evaluate_writes_clip_benchmark_record_and_reuses_cache(home, tmp_path):
    vlm, source, out = tiny_vlm(), colour_source(), tmp_path / "results"
    calls = count_image_batches(vlm)
    from zeroshift.zeroshot.evaluate import evaluate

    first = evaluate(vlm, source, templates="cifar10", out=out, runtime="torch", progress=False)
    assert sum(calls) == len(source)
    rec = first["zeroshot_classification"]
    files = list(out.iterdir())
    assert [f.name for f in files] == ["test_colours__tiny-clip_seed=0_dim=32_size=32+nobias_en_zeroshot_classification_cifar10.json"]
    on_disk = json.loads(files[0].read_text())
    assert on_disk == rec
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= on_disk.keys()
    assert (on_disk["dataset"], on_disk["model"], on_disk["pretrained"], on_disk["language"]) == (
        "test:colours", vlm.spec, "", "en")
    assert set(on_disk["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert on_disk["templates"] == get_templates("cifar10") and on_disk["classnames"] == COLOURS
    assert on_disk["zeroshift"]["rows"] == 48 and on_disk["zeroshift"]["skipped"] == 0

    second = evaluate(vlm, source, templates="cifar10", out=out, runtime="torch", progress=False)
    assert sum(calls) == len(source), "second evaluation re-encoded the images instead of using the cache"
    assert second == first

    # the metrics are what the classifier gives on freshly encoded images
    x = torch.stack([vlm.image_transform(source.load_image(i)) for i in range(len(source))])
    logits = classify(vlm.encode_image(x), zeroshot_weights(vlm, COLOURS, get_templates("cifar10")))
    assert rec["metrics"] == pytest.approx(classification_metrics(logits, source.labels), abs=1e-12)


def test_evaluate_auto_runs_every_task_the_source_supports(home, tmp_path):
    from zeroshift.zeroshot.evaluate import evaluate

    source = colour_source(24, spec="test:captioned", captions=True)
    source.labels[:4] = -1  # unlabelled rows count for retrieval only
    records = evaluate(tiny_vlm(), source, out=tmp_path / "r", runtime="torch", progress=False)
    assert list(records) == ["zeroshot_classification", "zeroshot_retrieval"]
    assert len(list((tmp_path / "r").glob("*.json"))) == 2
    assert records["zeroshot_classification"]["zeroshift"]["evaluated"] == 20
    assert records["zeroshot_classification"]["templates"] == get_templates("default")
    ret = records["zeroshot_retrieval"]["metrics"]
    assert set(ret) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert all(0.0 <= v <= 1.0 for v in ret.values())
    only = evaluate(tiny_vlm(), source, task="zeroshot_retrieval", out=None, runtime="torch", progress=False)
    assert only["zeroshot_retrieval"]["metrics"] == ret


def test_evaluate_rejects_a_task_the_data_cannot_support(home):
    from zeroshift.zeroshot.evaluate import evaluate

    with pytest.raises(DataError, match="captions"):
        evaluate(tiny_vlm(), colour_source(8), task="zeroshot_retrieval", out=None, runtime="torch")
    bare = ArraySource(np.zeros((4, 8, 8), np.uint8), "test:bare")
    with pytest.raises(DataError, match="neither"):
        evaluate(tiny_vlm(), bare, out=None, runtime="torch")
    with pytest.raises(ZeroshiftError, match="unknown task"):
        evaluate(tiny_vlm(), colour_source(8), task="linear_probe", out=None, runtime="torch")
    vlm, dup = tiny_vlm(), colour_source(8)
    dup.classes = COLOURS[:-1] + ["Red "]
    calls = count_image_batches(vlm)
    with pytest.raises(ZeroshiftError, match="duplicate class name"):  # before any image is encoded
        evaluate(vlm, dup, out=None, runtime="torch")
    assert calls == []
