"""Issue 13: exports that take pixels (export/preprocess.py, the pixels-in graph) and the runner without
PyTorch (export/run.py); bad input is one line and nothing half-written."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T1
from helpers import one_line, tiny_vlm
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from zeroshift import load, paths
from zeroshift.cli.main import main
from zeroshift.data.images import decode_image
from zeroshift.errors import ZeroshiftError
from zeroshift.export import export, preprocess
from zeroshift.export.onnx import export_classifier
from zeroshift.ort import session
from zeroshift.models.transforms import ArrayTransform, decode_side, recipe, resize_crop, split_batchable
from zeroshift.models.vlm import ImageEncoder, TowersVLM
from zeroshift.zeroshot.classifier import classify, zeroshot_weights

pytestmark = pytest.mark.usefixtures("home")
REAL_DATA = paths.data_dir()  # before the `home` fixture empties $ZEROSHIFT_HOME: where the catalogue was fetched
LABELS = ["red", "green", "blue", "white", "black"]


def image_files(folder) -> list:
    """A PNG, a JPEG, an RGBA PNG (composited on white) and a JPEG rotated by its EXIF orientation."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = [np.clip(np.array(c) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
              for c, (h, w) in [((220, 30, 30), (50, 70)), ((30, 200, 40), (90, 40)), ((40, 50, 220), (64, 64)),
                                ((240, 240, 240), (33, 120))]]
    paths = [folder / "red.png", folder / "green.jpg", folder / "blue.png", folder / "white.jpg"]
    Image.fromarray(pixels[0]).save(paths[0])
    Image.fromarray(pixels[1]).save(paths[1], quality=90)
    Image.fromarray(np.dstack([pixels[2], rng.integers(0, 256, (64, 64), dtype=np.uint8)]), "RGBA").save(paths[2])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate on display
    Image.fromarray(pixels[3]).save(paths[3], exif=exif)
    return paths


def torch_logits(vlm, paths, labels=LABELS, templates=None) -> torch.Tensor:
    """What `zeroshift predict` computes: decode to twice the input side, the model's transform, classify."""
    from zeroshift.data.templates import get_templates

    side = decode_side(vlm.image_transform)
    batch = torch.stack([vlm.image_transform(decode_image(p, side)) for p in paths])  # [N, 3, H, W]
    return classify(vlm.encode_image(batch), zeroshot_weights(vlm, labels, get_templates(templates)))


@pytest.mark.parametrize("transform", [
    resize_crop(32, norm="inception", crop_pct=0.875),
    T.Compose([T.Resize(40, max_size=50), T.CenterCrop((48, 36)), T.PILToTensor()]),  # crop larger: padded
    T1.Compose([T1.Resize(30, interpolation=T1.InterpolationMode.BILINEAR), T1.CenterCrop(32), T1.PILToTensor()]),
    T.Compose([T.Resize((20, 30), interpolation=T.InterpolationMode.LANCZOS), T.PILToTensor()]),
])
def test_preprocess_is_torchvision_pixel_for_pixel(transform):
    rule = recipe(transform)
    per_image = split_batchable(transform)[0]
    rng = np.random.default_rng(1)
    for _ in range(12):
        w, h = (int(v) for v in rng.integers(5, 300, 2))
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = per_image(image).permute(1, 2, 0).numpy()  # [H, W, 3] uint8
        assert np.array_equal(preprocess.resize_crop(image, rule), want), (w, h)


def test_preprocess_imports_no_torch():
    code = ("import sys, zeroshift.export.preprocess, zeroshift.export.run; "
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pixels_in_graph_gives_pytorch_answers_on_image_files(tmp_path):
    vlm = tiny_vlm()
    out = export_classifier(vlm, LABELS, tmp_path / "clf.onnx", templates="cifar10")
    info = preprocess.read_sidecar(out)
    assert info["input"] == {"name": "images", "shape": ["batch", 32, 32, 3], "dtype": "uint8", "layout": "nhwc",
                             "channels": "rgb"}
    rule = info["preprocess"]
    assert rule["size"] == [32, 32] and rule["decode"]["max_side"] == 64 and rule["in_graph"]
    assert [s["op"] for s in rule["steps"]] == ["resize", "center_crop"]
    assert rule["steps"][0] == {"op": "resize", "edge": "short", "size": 32, "max_size": None,
                                "interpolation": "bilinear"}
    assert rule["pixels"] == {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert info["model"] == vlm.spec and info["labels"] == LABELS and info["templates"] == "cifar10"
    paths = image_files(tmp_path / "images")
    pixels, errors = preprocess.load_batch(paths, rule)  # [4, 32, 32, 3]
    assert errors == {} and pixels.dtype == np.uint8 and pixels.shape == (4, 32, 32, 3)
    got = session(out).run(["logits"], {"images": pixels})[0]
    want = torch_logits(vlm, paths, templates="cifar10")
    assert np.array_equal(got.argmax(1), want.argmax(1).numpy())
    assert np.abs(got - want.numpy()).max() < 1e-3


def test_float_input_is_kept_on_request(tmp_path):
    vlm = tiny_vlm()
    out = export_classifier(vlm, LABELS, tmp_path / "clf.onnx", input="float")
    info = preprocess.read_sidecar(out)
    assert info["input"]["shape"] == ["batch", 3, 32, 32] and info["input"]["dtype"] == "float32"
    assert info["preprocess"]["in_graph"] is False  # the recipe still says how to make the float input
    with pytest.raises(ZeroshiftError, match="--input must be one of"):
        export_classifier(vlm, LABELS, tmp_path / "x.onnx", input="rgb")


class OwnPreprocessing(ImageEncoder):
    """An image tower whose transform is a backend's own numpy function (as open-nsfw's is)."""

    def __init__(self):
        super().__init__()
        self.spec, self.dim = "test:own-preprocessing", 8
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 8))
        self.image_transform = ArrayTransform(lambda im: np.asarray(im.resize((8, 8)), np.float32) / 255)

    def forward(self, x):
        return self.net(x)


def test_a_transform_without_a_recipe_is_one_line_and_float_still_works(tmp_path):
    image = OwnPreprocessing()
    text = load("tiny-clip:seed=1,dim=16").text
    vlm = TowersVLM(image, text, spec="test:own", image_head=nn.Linear(8, 16), dim=16).eval()
    with pytest.raises(ZeroshiftError) as e:
        export_classifier(vlm, LABELS, tmp_path / "x.onnx")
    assert "ArrayTransform" in one_line(e) and "--input float" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    out = export_classifier(vlm, LABELS, tmp_path / "x.onnx", input="float")
    assert preprocess.read_sidecar(out)["preprocess"] is None


def test_a_spec_that_is_not_a_vlm_is_one_line(tmp_path, capsys):
    with pytest.raises(ZeroshiftError) as e:
        export("student-cnn:width=8,size=32", LABELS, tmp_path / "x.onnx")
    assert "is an image encoder; export needs a VLM" in one_line(e)
    assert main(["export", "--model", "student-cnn:width=8,size=32", "--labels", "a,b", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "export needs a VLM" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing", "file", "folder"])
def test_bad_output_paths_are_one_line_and_write_nothing(tmp_path, where):
    (tmp_path / "a-file").write_text("x")
    out = {"missing": tmp_path / "absent" / "x.onnx", "file": tmp_path / "a-file" / "x.onnx",
           "folder": tmp_path}[where]
    with pytest.raises(ZeroshiftError) as e:
        export("tiny-clip:seed=0", LABELS, out)
    message = one_line(e)
    assert {"missing": "does not exist", "file": "is a file, not a folder", "folder": "is a folder"}[where] in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "home"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def tuxpaint_photos(n: int) -> tuple[list, list[str]]:
    """The first n photos of the odd half of Tux Paint (cut-outs with transparency) and its class names."""
    import zeroshift
    from zeroshift.data import fetch

    if not fetch.is_fetched("tuxpaint", REAL_DATA):
        pytest.skip("tuxpaint is not fetched (zeroshift data fetch tuxpaint)")
    source = zeroshift.dataset("tuxpaint[1::2]", root=REAL_DATA)
    step = max(1, len(source) // n)
    return [source.source.files[int(source.indices[i])] for i in range(0, len(source), step)][:n], source.classes


@pytest.mark.assets
def test_pixels_in_conse_gives_pytorch_top1_on_catalogue_photos(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs zeroshift[catalogue]")
    paths, classes = tuxpaint_photos(48)
    vlm = load("conse:effnet-lite0+minilm", runtime="torch")
    out = export_classifier(vlm, classes, tmp_path / "conse.onnx")
    rule = preprocess.read_sidecar(out)["preprocess"]
    assert rule["steps"][0]["interpolation"] == "bicubic" and rule["size"] == [224, 224]
    pixels, errors = preprocess.load_batch(paths, rule)
    assert errors == {}
    got = session(out).run(["logits"], {"images": pixels})[0]
    want = torch_logits(vlm, paths, labels=classes)
    assert np.array_equal(got.argmax(1), want.argmax(1).numpy())
    assert np.abs(got - want.numpy()).max() < 1e-2
    assert json.loads(out.with_name("conse.onnx.json").read_text())["teacher"] is None


# ---------------------------------------------------------------- the runner (export/run.py)
def predict_json(capsys, model: str, paths, labels=LABELS, templates: str | None = None) -> list[dict]:
    args = ["predict", "--model", model, "--labels", ",".join(labels), "--json", "--runtime", "torch", *map(str, paths)]
    assert main(args + (["--templates", templates] if templates else [])) == 0
    return json.loads(capsys.readouterr().out)["results"]


def runner_json(capsys, argv) -> tuple[int, list[dict] | None, str]:
    from zeroshift.export.run import main as run_main

    code = run_main([*map(str, argv), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out)["results"] if code != 2 else None), captured.err.strip()


def same_rankings(got: list[dict], want: list[dict], tol: float = 1e-4) -> None:
    """Per image the same labels in the same order (a swap only between labels whose probabilities tie within tol)."""
    assert [r["image"] for r in got] == [r["image"] for r in want]
    for g, w in zip(got, want):
        assert ("error" in g) == ("error" in w)
        if "error" in g:
            continue
        assert [x["label"] for x in g["ranking"]][0] == [x["label"] for x in w["ranking"]][0]
        probs = {x["label"]: x["prob"] for x in w["ranking"]}
        for a, b in zip(g["ranking"], w["ranking"]):
            assert a["label"] == b["label"] or abs(probs[a["label"]] - probs[b["label"]]) <= tol
            assert abs(a["prob"] - probs[a["label"]]) <= tol


@pytest.fixture()
def tiny_spec(tmp_path, add_run_kind):
    """tiny_vlm() as a `run:` folder of a test-only kind, so `zeroshift predict` loads the same model."""
    from zeroshift import runfolder

    add_run_kind("tiny-nobias", lambda folder, config, state, runtime: tiny_vlm())
    with runfolder.RunWriter(tmp_path / "run") as run:
        run.finish({"kind": "tiny-nobias"}, {"x": torch.zeros(1)}, "# tiny")
    return f"run:{tmp_path / 'run'}"


@pytest.mark.parametrize("graph_input", ["pixels", "float"])
def test_runner_gives_predicts_rankings(tmp_path, capsys, tiny_spec, graph_input):
    out = export(tiny_spec, LABELS, tmp_path / "clf.onnx", input=graph_input)
    paths = image_files(tmp_path / "images")
    want = predict_json(capsys, tiny_spec, paths)
    code, got, _ = runner_json(capsys, [out, *paths])
    assert code == 0
    same_rankings(got, want)
    code, again, _ = runner_json(capsys, [out, *paths, "--labels", ",".join(reversed(LABELS))])  # same labels
    assert code == 0 and again == got


def test_runner_bad_input_is_one_line(tmp_path, capsys):
    out = export_classifier(tiny_vlm(), LABELS, tmp_path / "clf.onnx")
    good = image_files(tmp_path / "images")[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    code, results, _ = runner_json(capsys, [out, good, broken])  # one bad image: skipped, said why
    assert code == 0 and "ranking" in results[0] and "broken.jpg" in results[1]["error"]
    code, results, err = runner_json(capsys, [out, broken])  # nothing classified: exit 1, one line
    assert code == 1 and err.startswith("error: none of the 1 image(s)") and "\n" not in err

    code, _, err = runner_json(capsys, [out, good, "--labels", "cat,dog"])
    assert code == 2 and "fixed labels (red, green, blue, white, black)" in err and "--towers" in err
    assert "\n" not in err
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(out.read_bytes())  # a graph with no sidecar
    code, _, err = runner_json(capsys, [foreign, good])
    assert code == 2 and "has no sidecar foreign.onnx.json" in err and "\n" not in err
    (tmp_path / "foreign.onnx.json").write_text((tmp_path / "clf.onnx.json").read_text())
    foreign.write_bytes(out.read_bytes() + b"\0")  # a sidecar beside another graph
    code, _, err = runner_json(capsys, [foreign, good])
    assert code == 2 and "sha256 differs" in err
    code, _, err = runner_json(capsys, [tmp_path / "absent.onnx", good])
    assert code == 2 and "no graph at" in err
