"""Hub specs without a network: one whole line at once naming the spec and the two ways out (local
weights, or the network), with or without HF_HUB_OFFLINE; a model already in the hub cache still loads."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import clean_env, free_port, one_line
from PIL import Image

from zeroshift import load
from zeroshift.errors import MissingWeights
from zeroshift.models import hub

pytestmark = pytest.mark.usefixtures("home")

# Runs each CLI command in this one process (the imports are paid once), stderr caught at fd 2: whatever
# the libraries write there (log records, warnings, retries) is counted, not only zeroshift's own line.
DRIVER = """
import json, os, sys, tempfile
from zeroshift.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile("w+") as f:
        sys.stderr.flush(); saved = os.dup(2); os.dup2(f.fileno(), 2)
        try:
            rc = main(argv)
        finally:
            sys.stderr.flush(); os.dup2(saved, 2); os.close(saved)
        f.seek(0)
        results.append({"rc": rc, "stderr": f.read()})
print(json.dumps(results))
"""
SPECS = {"hf-clip:openai/clip-vit-base-patch32": "hf-clip:/path/to/folder",
         "openclip:ViT-B-32@laion2b_s34b_b79k": "openclip:ViT-B-32@/path/to/weights.safetensors"}


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_hub_specs_offline_fail_in_one_line(offline, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), ZEROSHIFT_HOME=str(tmp_path / "home"))
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:  # nothing listens there: every request is refused, as with no network (and retried, before)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    argvs = [["predict", "--model", spec, "--labels", "a,b", str(image)] for spec in SPECS]
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for (spec, local), result in zip(SPECS.items(), json.loads(done.stdout.splitlines()[-1])):
        err = result["stderr"]
        assert result["rc"] == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert f"error: {spec}: its weights are not on this machine" in err and local in err, err
        assert ("HF_HUB_OFFLINE" in err) == offline and "network reachable" in err, err


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """huggingface_hub as in a process started without HF_HUB_OFFLINE on a machine without a network,
    its cache in tmp_path/cache (empty)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_probes", {})
    return tmp_path / "cache"


def _cache(cache, repo: str, folder) -> None:
    """`folder` as the hub cache's snapshot of `repo` (what a download with the network leaves)."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def _tiny_clip(folder) -> None:
    """A tiny random CLIPModel and processor (byte-level vocabulary, no merges) saved to `folder`."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=24, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(folder)


def test_unreachable_hub_fails_at_once_and_cached_models_still_load(unreachable_hub, tmp_path):
    with pytest.raises(MissingWeights) as e:
        load("st:sentence-transformers/all-MiniLM-L6-v2")
    message = one_line(e)
    assert message.startswith("st:sentence-transformers/all-MiniLM-L6-v2: its weights are not on this machine")
    assert "does not answer" in message and "st:/path/to/folder" in message and "network" in message
    _tiny_clip(tmp_path / "tiny")
    _cache(unreachable_hub, "zs-test/tiny-clip", tmp_path / "tiny")
    vlm = load("hf-clip:zs-test/tiny-clip")  # from the cache, without asking the hub
    assert vlm.spec == "hf-clip:zs-test/tiny-clip" and vlm.dim == 16
    assert vlm.encode_text(["a cat"]).shape == (1, 16)


def test_a_long_fetch_error_is_cut_at_a_word():
    from zeroshift.errors import fetch_failed

    cause = OSError("Failed to download file (open_clip_pytorch_model.bin) for laion/CLIP-ViT-B-32-laion2B. " * 4)
    message = str(fetch_failed("openclip:ViT-B-32@laion2b", "openclip:ViT-B-32@/path/w.safetensors", cause))
    shown = message.rpartition("[")[2]
    assert "\n" not in message and shown.endswith(" ...]") and len(shown) < 170
    assert cause.args[0].startswith(shown.removesuffix(" ...]"))  # whole words, none cut short
    assert cause.args[0][len(shown) - 5] == " "
