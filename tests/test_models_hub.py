"""Hub-weighted backends with real architectures and random (or test-made local) weights."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from helpers import export_onnx, one_line, save_tiny_st
from torch import nn

from zeroshift import load
from zeroshift.errors import MissingWeights, SpecError
from zeroshift.models.openclip import resolve
from zeroshift.models.transforms import probe_batch, probe_images
from zeroshift.models.vlm import ImageEncoder, TextEncoder, TowersVLM
from zeroshift.models.runtime import accelerate

pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def hub_offline(monkeypatch):
    """Make huggingface_hub fail at once, as on a machine without network (no retries)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def images_for(model, n: int = 2) -> torch.Tensor:
    return probe_batch(model.image_transform, n)  # [n, 3, H, W]


# --- open_clip ---------------------------------------------------------------------------------

def test_openclip_random_weights_is_a_vlm(tmp_path):
    from safetensors.torch import save_file

    vlm = load("openclip:ViT-S-32@random")
    assert isinstance(vlm, TowersVLM) and vlm.spec == "openclip:ViT-S-32@random" and vlm.dim == 384
    x = images_for(vlm, 2)
    assert x.shape == (2, 3, 224, 224)
    img = vlm.encode_image(x)
    txt = vlm.encode_text(["a photo of a dog.", "a cat", "x"])
    assert img.shape == (2, 384) and txt.shape == (3, 384) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    assert not torch.allclose(txt[0], txt[1])
    # the towers are open_clip's own encode_image / encode_text
    model = vlm.text.model
    with torch.inference_mode():
        assert torch.allclose(img, model.encode_image(x), atol=1e-5)
    assert resolve(vlm.spec.partition(":")[2])[2] == vlm.spec  # the spec names itself
    # a local weights file: the offline way to real weights
    file = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    from_file = load(f"openclip:ViT-S-32@{file}")
    assert from_file.spec == f"openclip:ViT-S-32@{file.resolve()}"
    assert torch.allclose(from_file.encode_image(x), img, atol=1e-5)
    assert torch.allclose(from_file.encode_text(["a cat"]), txt[1:2], atol=1e-5)


def test_openclip_spec_errors(tmp_path):
    with pytest.raises(SpecError) as e:
        load("openclip:ViT-S-32")  # open_clip lists no pretrained weights for it
    assert "@random" in one_line(e)
    with pytest.raises(SpecError):
        load("openclip:ViT-S-32@no_such_tag")
    with pytest.raises(SpecError):
        load("openclip:No-Such-Arch@random")
    with pytest.raises(MissingWeights) as e:
        load(f"openclip:ViT-S-32@{tmp_path}/absent.safetensors")
    assert "absent.safetensors" in one_line(e)


def test_openclip_hub_failure_is_missing_weights(hub_offline):
    with pytest.raises(MissingWeights) as e:
        load("openclip:PE-Core-T-16-384")  # default tag 'meta', fetched from the hub
    message = one_line(e)
    assert "openclip:PE-Core-T-16-384@meta" in message and "@/path/to/weights" in message


# --- transformers CLIP -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory):
    """A tiny random CLIPModel + processor (byte-level vocabulary, no merges) saved to a folder."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf-clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_hf_clip_from_local_folder(tiny_hf_clip):
    from transformers import CLIPModel

    vlm = load(f"hf-clip:{tiny_hf_clip}")
    assert vlm.spec == f"hf-clip:{tiny_hf_clip.resolve()}" and vlm.dim == 16
    x = images_for(vlm, 3)
    assert x.shape == (3, 3, 32, 32)
    texts = ["a photo of a dog.", "a cat", "a very long caption " * 10]  # the last one is truncated
    img, txt = vlm.encode_image(x), vlm.encode_text(texts)
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    reference = CLIPModel.from_pretrained(tiny_hf_clip).eval()
    tokens = vlm.text.tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.inference_mode():
        want_img = reference.visual_projection(reference.vision_model(pixel_values=x).pooler_output)
        want_txt = reference.text_projection(reference.text_model(**tokens).pooler_output)
    assert torch.allclose(img, want_img, atol=1e-5) and torch.allclose(txt, want_txt, atol=1e-5)
    assert load(vlm.spec).spec == vlm.spec


def test_hf_clip_missing_folder(tmp_path):
    with pytest.raises(MissingWeights) as e:
        load(f"hf-clip:{tmp_path}/absent")
    assert "absent" in one_line(e)


# --- timm --------------------------------------------------------------------------------------

def test_timm_features_logits_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    enc = load("timm:test_resnet@random")
    assert isinstance(enc, ImageEncoder) and enc.spec == "timm:test_resnet@random"
    x = images_for(enc, 2)
    assert x.shape == (2, 3, 160, 160)  # timm's data config for this architecture
    assert enc.encode_image(x).shape == (2, enc.dim) and enc.dim == 96
    logits = load("timm:test_resnet@random#logits")
    assert logits.dim == 1000 and logits.encode_image(x).shape == (2, 1000)
    assert logits.spec == "timm:test_resnet@random#logits" and load(logits.spec).spec == logits.spec
    # a local weights file goes through timm's own loader (classifier dropped for features)
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in logits.model.state_dict().items()}, str(file))
    from_file = load(f"timm:test_resnet@{file}")
    assert from_file.spec == f"timm:test_resnet@{file.resolve()}"
    with torch.inference_mode():
        want = logits.model.forward_head(logits.model.forward_features(x), pre_logits=True)
    assert torch.allclose(from_file.encode_image(x), want, atol=1e-5)


def test_timm_errors(tmp_path, hub_offline):
    with pytest.raises(SpecError):
        load("timm:no_such_net")
    with pytest.raises(SpecError):
        load("timm:resnet18.no_such_tag@random")
    with pytest.raises(MissingWeights) as e:
        load(f"timm:test_resnet@{tmp_path}/absent.safetensors")
    one_line(e)
    with pytest.raises(MissingWeights) as e:
        load("timm:test_resnet")  # pretrained weights from the hub
    assert "timm:test_resnet@/path/to/weights.safetensors" in one_line(e)


# --- torchvision -------------------------------------------------------------------------------

def test_torchvision_pooled_features_and_local_weights(tmp_path):
    enc = load("torchvision:mobilenet_v3_small@random")
    x = images_for(enc, 2)
    assert x.shape == (2, 3, 224, 224) and enc.dim == 1024  # the input of the last Linear(1024, 1000)
    assert enc.encode_image(x).shape == (2, 1024)
    assert enc.spec == "torchvision:mobilenet_v3_small@random"

    logits = load("torchvision:mobilenet_v3_small@random#logits")
    assert logits.dim == 1000 and logits.encode_image(x).shape == (2, 1000)
    file = tmp_path / "mobilenet.pth"
    torch.save(logits.model.state_dict(), file)
    feats = load(f"torchvision:mobilenet_v3_small@{file}")
    assert feats.dim == 1024 and feats.spec == f"torchvision:mobilenet_v3_small@{file.resolve()}"
    with torch.inference_mode():
        pooled = feats.encode_image(x)  # [2, 1024]
        want = logits.model.classifier[-1](pooled)  # the removed head on the pooled features
    assert torch.allclose(want, logits.encode_image(x), atol=1e-4)


def test_torchvision_errors(tmp_path, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(MissingWeights) as e:
        load("torchvision:resnet18")
    assert "torchvision:resnet18@/path/to/weights.pth" in one_line(e)
    with pytest.raises(SpecError):
        load("torchvision:no_such_net@random")
    with pytest.raises(MissingWeights):
        load(f"torchvision:resnet18@{tmp_path}/absent.pth")


# --- sentence-transformers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    """A tiny random BERT SentenceTransformer (word-level vocabulary written here) saved to a folder."""
    words = "a an the of photo picture dog cat car tree house red blue small big . ,".split()
    return save_tiny_st(tmp_path_factory.mktemp("st"), words, max_seq_length=32)


def test_st_text_encoder(tiny_st):
    enc = load(f"st:{tiny_st}")
    assert isinstance(enc, TextEncoder) and enc.dim == 32 and enc.spec == f"st:{tiny_st.resolve()}"
    texts = ["a photo of a dog .", "the red car", "a big house"]
    out = enc.encode_text(texts)
    assert out.shape == (3, 32) and not torch.allclose(out[0], out[1])
    assert torch.allclose(out, torch.as_tensor(enc.model.encode(texts)), atol=1e-5)  # = sentence-transformers
    assert enc(texts).requires_grad  # forward keeps gradients for fine-tuning
    assert load(enc.spec).spec == enc.spec


def test_st_missing_folder(tmp_path):
    with pytest.raises(MissingWeights) as e:
        load(f"st:{tmp_path}/absent")
    one_line(e)


# --- onnx --------------------------------------------------------------------------------------

class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        features = self.body(x)  # [N, 8]
        return self.head(features), features


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    file = tmp_path_factory.mktemp("onnx") / "two_heads.onnx"
    return model, export_onnx(model, torch.randn(2, 3, 48, 48), file, outputs=("logits", "features"))


def test_onnx_encoder_outputs_and_options(tiny_onnx):
    model, file = tiny_onnx
    enc = load(f"onnx:{file}#features?norm=inception&size=48")
    assert enc.spec == f"onnx:{file.resolve()}#features?norm=inception&size=48" and enc.dim == 8
    x = images_for(enc, 3)
    assert x.shape == (3, 3, 48, 48) and -1 <= float(x.min()) and float(x.max()) <= 1  # inception norm
    with torch.inference_mode():
        assert torch.allclose(enc.encode_image(x), model(x)[1], atol=1e-5)
    first = load(f"onnx:{file}")  # default: the first output, input size read from the model (48)
    assert first.dim == 5 and first.encode_image(images_for(first, 2)).shape == (2, 5)
    assert load(enc.spec).spec == enc.spec
    assert accelerate(first, "auto") is first


def test_onnx_errors(tmp_path, tiny_onnx):
    _, file = tiny_onnx
    with pytest.raises(MissingWeights) as e:
        load(f"onnx:{tmp_path}/absent.onnx")
    one_line(e)
    with pytest.raises(SpecError):
        load(f"onnx:{file}#no_such_output")
    with pytest.raises(SpecError):
        load(f"onnx:{file}?colour=blue")
    with pytest.raises(SpecError):
        load(f"onnx:{file}?norm=sepia")


def test_unknown_scheme_is_a_spec_error():
    with pytest.raises(SpecError) as e:
        load("nosuch:thing")
    assert "nosuch" in one_line(e)


def test_probe_images_are_deterministic():
    a, b = probe_images(2, seed=1), probe_images(2, seed=1)
    assert all(np.array_equal(np.asarray(i), np.asarray(j)) for i, j in zip(a, b))
