"""A model of the wrong kind (an image encoder where a VLM is needed, ...) is refused by its spec's kind,
in one line naming what was given and what is needed, before any model is loaded or data opened."""
from __future__ import annotations

import pytest
from helpers import one_line, tiny_vlm

import zeroshift
from zeroshift import specs
from zeroshift.cli.main import main
from zeroshift.compose import build_student, tower
from zeroshift.errors import SpecError
from zeroshift.ranking import predict
from zeroshift.zeroshot.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def nothing_loads(monkeypatch):
    """Building any model or data source fails the test: the kind check must come first."""
    def built(spec, *args, **kwargs):
        raise AssertionError(f"{spec} was built before its kind was checked")

    monkeypatch.setattr(specs, "build", built)


def test_kinds_of_specs_and_objects():
    vlm = tiny_vlm()
    cases = {"effnet-lite0": "image", "minilm": "text", "conse:effnet-lite2+minilm": "vlm",
             "run:/no/such/run": "vlm", "student-cnn": "image", vlm: "vlm", vlm.image: "image", vlm.text: "text",
             object(): None}
    for model, kind in cases.items():
        assert specs.model_kind(model) == kind, model
    assert specs.require("run:/no/such/run", "vlm", "teacher") == "vlm"  # nothing read, nothing loaded
    with pytest.raises(SpecError) as e:
        specs.require(object(), "vlm", "model", command="predict")
    assert "<object> has neither encode_image nor encode_text; predict needs a VLM" in one_line(e)


CLI = [
    (["predict", "--model", "effnet-lite0", "--labels", "cat,dog", "photo.jpg"],
     "model effnet-lite0 is an image encoder; predict needs a VLM"),
    (["eval", "--model", "effnet-lite0", "--data", "folder:nowhere"],
     "model effnet-lite0 is an image encoder; eval needs a VLM"),
    (["export", "--model", "effnet-lite0", "--labels", "cat,dog", "--out", "x.onnx"],
     "model effnet-lite0 is an image encoder; export needs a VLM"),
    (["serve", "--model", "effnet-lite0"], "model effnet-lite0 is an image encoder; serve needs a VLM"),
    (["embed", "--model", "minilm", "--data", "folder:nowhere"],
     "model minilm is a text encoder; embed needs an image encoder or a VLM"),
    (["transfer", "--teacher", "effnet-lite0", "--encoder", "effnet-lite1", "--data", "folder:nowhere",
      "--method", "lstsq", "--out", "OUT"], "--teacher effnet-lite0 is an image encoder; a teacher must be a VLM"),
    (["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "minilm", "--data", "folder:nowhere", "--out", "OUT"],
     "--encoder minilm is a text encoder; an encoder must be an image encoder or a VLM"),
    (["distill", "--teacher", "effnet-lite0", "--data", "folder:nowhere", "--out", "OUT"],
     "--teacher effnet-lite0 is an image encoder; a teacher must be a VLM"),
    (["distill", "--teacher", "tiny-clip:seed=0", "--student", "minilm", "--data", "folder:nowhere", "--out", "OUT"],
     "--student minilm is a text encoder; a student must be an image encoder (e.g. student-cnn"),
    (["align", "--image", "minilm", "--text", "minilm", "--data", "csv:nowhere.csv", "--out", "OUT"],
     "--image minilm is a text encoder; an image tower must be an image encoder or a VLM"),
    (["align", "--image", "effnet-lite0", "--text", "effnet-lite0", "--data", "csv:nowhere.csv", "--out", "OUT"],
     "--text effnet-lite0 is an image encoder; a text tower must be a text encoder or a VLM"),
    (["quickstart", "--candidates", "transfer:minilm", "--out", "OUT"],
     "--candidates minilm is a text encoder; a candidate encoder must be an image encoder or a VLM"),
    (["shrink", "--teacher", "tiny-clip:seed=0", "--data", "folder:nowhere", "--labels", "a,b", "--candidates",
      "distill:minilm", "--out", "OUT"],
     "--candidates minilm is a text encoder; a candidate student must be an image encoder"),
]


@pytest.mark.parametrize("argv,message", CLI, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CLI)])
def test_cli_refuses_a_model_of_the_wrong_kind(argv, message, nothing_loads, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "(e.g. " in err, err
    assert not (tmp_path / "OUT").exists() and not (tmp_path / "x.onnx").exists()


def test_python_entry_points_refuse_the_wrong_kind(nothing_loads, tmp_path):
    vlm = tiny_vlm()
    calls = [
        (lambda: zeroshift.transfer(teacher="effnet-lite0", encoder="effnet-lite1", data="folder:x", method="lstsq",
                                    out=str(tmp_path / "run")), "--teacher effnet-lite0 is an image encoder"),
        (lambda: zeroshift.distill(teacher="tiny-clip:seed=0", student="tiny-clip:seed=1", data=("folder:x",),
                                   out=str(tmp_path / "run")), "--student tiny-clip:seed=1 is a VLM"),
        (lambda: predict(vlm.image, ["x.png"], ["cat"]), f"model {vlm.image.spec} is an image encoder; predict"),
        (lambda: evaluate(vlm.text, "folder:x"), f"model {vlm.text.spec} is a text encoder; eval needs a VLM"),
        (lambda: zeroshift.embed("minilm", "folder:x"), "model minilm is a text encoder; embed needs"),
        (lambda: build_student("conse:effnet-lite2+minilm", 16), "student conse:effnet-lite2+minilm is a VLM"),
        (lambda: tower("minilm", "image"), "image tower minilm is a text encoder"),
    ]
    for call, message in calls:
        with pytest.raises(SpecError) as e:
            call()
        assert message in one_line(e)
    assert not (tmp_path / "run").exists()


def test_a_vlm_gives_its_towers(tmp_path):
    """Where a tower is needed a VLM's side is allowed: align --image/--text and transfer --encoder take one."""
    assert specs.require("tiny-clip:seed=0", ("image", "vlm"), "image tower") == "vlm"
    image, text = tower("tiny-clip:seed=0", "image"), tower("tiny-clip:seed=0", "text")
    assert image.dim and text.dim and callable(image.encode_image) and callable(text.encode_text)
