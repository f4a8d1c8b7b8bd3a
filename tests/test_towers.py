"""Issue 13, item 3: `export --towers` writes image.onnx, text.onnx and tokenizer.json for every VLM kind
(bridged, distilled and aligned runs, conse:, openclip:, hf-clip:), each checked against PyTorch; the runner
ranks labels chosen at run time as PyTorch does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import one_line, save_tiny_st
from PIL import Image
from test_models_hub import tiny_hf_clip  # noqa: F401 - a fixture
from torch import nn

import zeroshift.ranking
from zeroshift import load, runfolder
from zeroshift.cli.main import main
from zeroshift.errors import ZeroshiftError
from zeroshift.export import export
from zeroshift.export.quantize import Int8
from zeroshift.export.run import predict
from zeroshift.export.run import main as run_main
from zeroshift.models.aligned import Heads
from zeroshift.models.bridge import Bridge
from zeroshift.models.vlm import TowersVLM

pytestmark = pytest.mark.usefixtures("module_home")
WORDS = "a an the of photo picture dog cat car tree house red blue green small big thing . ,".split()
LABELS = ["red", "green", "blue"]
STUDENT = "student-cnn:width=8,size=32"


@pytest.fixture(scope="module")
def st(tmp_path_factory) -> str:
    """A tiny random BERT sentence encoder (mean pooling), as an st: spec."""
    return f"st:{save_tiny_st(tmp_path_factory.mktemp('st'), WORDS, max_seq_length=12)}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, st) -> dict[str, str]:
    """An aligned run (tiny-clip's image tower and the tiny sentence encoder, with heads into 16-d), and a
    bridged and a distilled run whose teacher it is: the three kinds of run folder, as specs."""
    from zeroshift.compose import build_student
    from zeroshift.models.student import architecture_spec

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    with runfolder.RunWriter(root / "aligned") as run:
        run.finish({"kind": "aligned", "image": "tiny-clip:seed=0", "text": st,
                    "dims": {"image": 32, "text": 32, "joint": 16}},
                   {f"heads.{k}": v for k, v in Heads(32, 32, 16).state_dict().items()}, "# aligned")
    teacher = f"run:{root / 'aligned'}"
    encoder = load(STUDENT)
    bridge = Bridge(encoder.dim, 16)
    with runfolder.RunWriter(root / "bridge") as run:
        run.finish({"kind": "bridge", "teacher": teacher, "encoder": STUDENT, "bridge": bridge.config(),
                    "dims": {"encoder": encoder.dim, "teacher": 16}},
                   {f"bridge.{k}": v for k, v in bridge.state_dict().items()}, "# bridge")
    student = build_student(architecture_spec(STUDENT), 16)
    with runfolder.RunWriter(root / "student") as run:
        run.finish({"kind": "student", "student": STUDENT, "teacher": teacher,
                    "dims": {"teacher": 16, "student": student.encoder.dim}},
                   {f"student.{k}": v for k, v in student.state_dict().items()}, "# student")
    return {"aligned": teacher, "bridge": f"run:{root / 'bridge'}", "student": f"run:{root / 'student'}"}


@pytest.fixture(scope="module")
def tiny_openclip(tmp_path_factory) -> str:
    """A tiny open_clip architecture (registered for this run) with random weights."""
    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    file = tmp_path_factory.mktemp("openclip") / "zs-tiny-clip.json"
    file.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(file))
    return "openclip:zs-tiny-clip@random"


def colour_images(folder) -> list[str]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, rgb in enumerate([(220, 30, 30), (30, 200, 40), (40, 50, 220), (200, 200, 40)]):
        pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (40 + 7 * i, 50, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def same_ranking(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want):
        assert [x["label"] for x in g["ranking"]] == [x["label"] for x in w["ranking"]]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(g["ranking"], w["ranking"])) < 1e-4


@pytest.mark.parametrize("kind", ["aligned", "bridge", "student", "conse", "openclip", "hf-clip"])
def test_every_vlm_kind_exports_both_towers(tmp_path, kind, runs, st, tiny_openclip, tiny_hf_clip):  # noqa: F811
    spec = {"conse": f"conse:timm:test_resnet@random+{st}", "openclip": tiny_openclip,
            "hf-clip": f"hf-clip:{tiny_hf_clip}"}.get(kind) or runs[kind]
    vlm = load(spec, runtime="torch")
    out = export(vlm, None, tmp_path / "towers", towers=True)
    card = ["README.md"] if kind in runs else []  # a run's model card ships with its towers
    assert sorted(p.name for p in out.iterdir()) == card + ["image.onnx", "image.onnx.json", "text.onnx",
                                                          "text.onnx.json", "tokenizer.json"]
    image, text = (json.loads((out / f"{n}.onnx.json").read_text()) for n in ("image", "text"))
    assert image["kind"] == "image-tower" and text["kind"] == "text-tower" and image["model"] == vlm.spec
    assert image["output"] == {"name": "embeddings", "shape": ["batch", vlm.dim], "normalized": True}
    assert image["check"]["max_abs_diff"] < 1e-4 and text["check"]["max_abs_diff"] < 1e-4
    assert image["labels"] is None and image["text"] == "text.onnx" and image["input"]["dtype"] == "uint8"
    assert text["tokenizer"]["padding"] == ("max_length" if kind == "openclip" else "longest")
    if kind in ("bridge", "student"):
        assert image["teacher"].startswith(runs["aligned"]) and text["text_model"].startswith(st)  # the teacher's text
    paths = colour_images(tmp_path / "images")
    labels = ["a red thing", "a green thing", "a blue thing", "a small dog"]  # chosen now, not at export
    same_ranking(predict(out, paths, labels), zeroshift.ranking.predict(vlm, paths, labels, runtime="torch"))


def test_openclip_tokenizer_json_gives_open_clips_ids(tiny_openclip):
    from tokenizers import Tokenizer

    from zeroshift.export.towers import tokenizer_for

    vlm = load(tiny_openclip)
    tokenizer = Tokenizer.from_str(tokenizer_for(vlm.text.text_parts()).to_str())  # as tokenizer.json reloads it
    texts = ["a photo of a cat.", "  Hello   WORLD, it's me!  ", "x " * 400, "Crème brûlée ünïcode",
             "I'm 42; we'll see... #tag @user", "日本語のテキスト", "emoji 😀👍🏽", "tab\there\nnewline", "",
             "don't STOP", "a" * 100, "l'été", "Ⅻ ½ ²", "a.b,c!d?e", "<start_of_text> inside", "x<END_OF_TEXT>y"]
    want = vlm.text.tokenizer(texts).tolist()  # [N, 77], zero-padded
    assert [e.ids for e in tokenizer.encode_batch(texts)] == want


def test_a_text_tower_that_cannot_be_exported_is_one_line(tmp_path, capsys):
    with pytest.raises(ZeroshiftError) as e:
        export("tiny-clip:seed=0", None, tmp_path / "towers", towers=True)
    message = one_line(e)
    assert "--towers needs tiny-clip:seed=0,dim=32,size=32's text tower" in message
    assert "text tower tiny-clip:seed=0,dim=32,size=32/text (TinyTextEncoder) cannot be exported" in message
    assert "no tokenizer.json" in message and not (tmp_path / "towers").exists()
    assert main(["export", "--model", "tiny-clip:seed=0", "--out", str(tmp_path / "x.onnx")]) == 2  # a classifier needs labels
    assert "--labels is required" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ZeroshiftError, match="is a file; --towers writes a folder"):
        export("tiny-clip:seed=0", None, tmp_path / "a-file", towers=True)


def test_cli_towers_and_the_runner_with_default_and_chosen_labels(tmp_path, runs, capsys):
    out = tmp_path / "towers"
    assert main(["export", "--model", runs["aligned"], "--towers", "--out", str(out), "--labels", "red,green,blue",
                 "--templates", "cifar10"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "image.onnx") in printed and str(out / "text.onnx") in printed
    paths = colour_images(tmp_path / "images")
    vlm = load(runs["aligned"])
    want = zeroshift.ranking.predict(vlm, paths, LABELS, templates="cifar10")
    assert run_main([str(out), *paths, "--json"]) == 0  # the folder, its default labels and templates
    same_ranking(json.loads(capsys.readouterr().out)["results"], want)
    assert run_main([str(out / "image.onnx"), paths[0], "--labels", "a dog,a cat", "--json"]) == 0
    assert [x["label"] for x in json.loads(capsys.readouterr().out)["results"][0]["ranking"]] in (
        ["a dog", "a cat"], ["a cat", "a dog"])
    assert run_main([str(out / "text.onnx"), paths[0]]) == 2
    assert "the text half of a tower pair" in capsys.readouterr().err
    (out / "tokenizer.json").unlink()
    assert run_main([str(out), paths[0]]) == 2
    assert "no tokenizer at" in capsys.readouterr().err


def test_towers_without_default_labels_need_labels_at_run_time(tmp_path, runs, capsys):
    out = export(runs["aligned"], None, tmp_path / "towers", towers=True)
    assert run_main([str(out), *colour_images(tmp_path / "images")]) == 2
    assert "exported without default labels: give --labels" in capsys.readouterr().err


def test_int8_towers_static_image_dynamic_text(tmp_path, runs):
    from helpers import colour_folder

    data = colour_folder(tmp_path / "photos", n=6, side=36)
    out = export(runs["aligned"], None, tmp_path / "towers", towers=True, keep_float=True,
                 int8=Int8(calibrate=f"folder:{data}", images=8, check_images=10, min_agreement=0.0))
    image, text = (json.loads((out / f"{n}.onnx.json").read_text()) for n in ("image", "text"))
    assert image["precision"] == text["precision"] == "int8"
    assert image["int8"]["method"].startswith("static") and text["int8"]["method"].startswith("dynamic")
    check = image["int8"]["check"]
    assert check["labels"] == 3 and check["images"] == 10 and 0.0 <= check["top1_agreement"] <= 1.0
    assert {"image_int8_only", "text_int8_only"} <= set(check)
    assert image["int8"]["calibration"]["data"] == [f"folder:{data}"] and text["int8"]["calibration"] is None
    assert (out / "image.float.onnx").is_file() and json.loads((out / "image.float.onnx.json").read_text())[
        "text"] == "text.float.onnx"
    results = predict(out, colour_images(tmp_path / "images"), LABELS)
    assert all(len(r["ranking"]) == 3 for r in results)


def test_a_bridge_holding_an_st_text_tower_in_the_teachers_space(tmp_path, st):
    """A TowersVLM whose text side is a bare sentence encoder with a head (what a bridge built on a text
    tower alone holds): the head is part of text.onnx."""
    text = load(st)
    torch.manual_seed(1)
    vlm = TowersVLM(load(STUDENT), text, spec="test:st-head", image_head=nn.Linear(load(STUDENT).dim, 8),
                    text_head=nn.Linear(text.dim, 8), dim=8).eval()
    out = export(vlm, LABELS, tmp_path / "towers", towers=True)
    assert json.loads((out / "text.onnx.json").read_text())["output"]["shape"] == ["batch", 8]
    paths = colour_images(tmp_path / "images")
    same_ranking(predict(out, paths), zeroshift.ranking.predict(vlm, paths, LABELS, runtime="torch"))
