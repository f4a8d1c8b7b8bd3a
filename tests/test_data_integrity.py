"""Data specs and images that used to end in a traceback or a silently different result (issue 17, items 0, 9, 10)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import one_line
from PIL import Image

from zeroshift import specs
from zeroshift.cache.embed import embed
from zeroshift.cli.main import main
from zeroshift.data import images as images_module
from zeroshift.data.base import DataSource
from zeroshift.data.files import FileSource
from zeroshift.errors import DataError, SpecError
from zeroshift.ranking import predict


def _csv(path, body: bytes):
    path.write_bytes(body)
    return f"csv:{path}"


@pytest.fixture()
def pngs(tmp_path):
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (24, 24), colour).save(tmp_path / f"{i}.png")
    return tmp_path


# ---------------------------------------------------------------- item 10: data specs
@pytest.mark.parametrize("spec", ["folder:~nosuchuser-zs/x", "csv:~nosuchuser-zs/x.csv"])
def test_unknown_user_in_a_path_is_one_line(spec):
    with pytest.raises(SpecError) as e:
        specs.dataset(spec)
    assert "~nosuchuser-zs" in one_line(e) and "no such user" in one_line(e)


def test_unknown_user_through_eval_and_embed(home, tmp_path, capsys):
    for argv in (["eval", "--model", "tiny-clip:seed=0", "--data", "folder:~nosuchuser-zs/x"],
                 ["embed", "--model", "tiny-clip:seed=0", "--data", "folder:~nosuchuser-zs/x", "--out", str(tmp_path / "f")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "~nosuchuser-zs" in err


def test_csv_rows_that_are_not_utf8_are_skipped_and_listed(home, pngs, tmp_path):
    os.link(pngs / "1.png", os.fsdecode(bytes(tmp_path) + b"/\xff\xfe.png"))  # a real file with a non-UTF-8 name
    spec = _csv(tmp_path / "pairs.csv", b"path,caption\n0.png,a red square\n\xff\xfe.png,a blue square\n"
                                        b"2.png,a green \xff square\n")
    feats = embed("tiny-clip:seed=0", spec, out=tmp_path / "feats", progress=False, runtime="torch")
    assert len(feats) == 1 and feats.captions == ["a red square"]
    reasons = " ".join(str(b) for b in feats.manifest["skipped"])
    assert "path in data row 2 is not UTF-8" in reasons and "caption in data row 3 is not UTF-8" in reasons


def test_eval_retrieval_skips_undecodable_captions(home, pngs, tmp_path, capsys):
    spec = _csv(tmp_path / "pairs.csv", b"path,caption\n0.png,a red square\n1.png,a blue square\n"
                                        b"2.png,a green \xff square\n")
    assert main(["eval", "--model", "tiny-clip:seed=0", "--data", spec, "--out", str(tmp_path / "r"),
                 "--runtime", "torch"]) == 0
    assert "zeroshot_retrieval" in capsys.readouterr().out


def test_csv_label_that_is_not_utf8_is_refused(pngs, tmp_path):
    spec = _csv(tmp_path / "l.csv", b"path,label\n0.png,cat\n1.png,d\xffog\n")
    with pytest.raises(DataError) as e:
        specs.dataset(spec)
    assert "label in data row 2 is not UTF-8" in one_line(e)


# ---------------------------------------------------------------- item 9: CSV headers, size bounds
def test_csv_header_without_a_path_column_is_refused(pngs, tmp_path):
    spec = _csv(tmp_path / "h.csv", b"image_id,category\n0.png,cat\n1.png,dog\n")
    with pytest.raises(DataError) as e:
        specs.dataset(spec)
    msg = one_line(e)
    assert "'image_id,category'" in msg and "path, image, image_path" in msg and "label, class, category" in msg


def test_headerless_csv_still_reads(pngs, tmp_path):
    source = specs.dataset(_csv(tmp_path / "n.csv", b"0.png,cat\n1.png,dog\n2.png,cat\n"))
    assert len(source) == 3 and source.classes == ["cat", "dog"]


@pytest.mark.parametrize("spec, word", [
    ("tiny-clip:size=20000", "size"), ("tiny-clip:dim=100000", "dim"),
    ("student-cnn:size=100000", "size"), ("student-cnn:width=5000", "width"), ("student-vit:dim=50000", "dim"),
])
def test_model_size_options_are_bounded(spec, word):
    with pytest.raises(SpecError) as e:
        specs.load(spec)
    assert word in one_line(e) and ("at most" in one_line(e) or "from" in one_line(e))


@pytest.mark.parametrize("opt", ["size=100000", "n=100000000000", "size=4"])
def test_synthetic_size_options_are_bounded(opt):
    with pytest.raises(SpecError) as e:
        specs.dataset(f"synthetic:classes=cat+dog,{opt}")
    assert opt.split("=")[0] in one_line(e) and "from" in one_line(e)


# ---------------------------------------------------------------- item 3 (source side): labels and captions are identity
def test_relabelled_csv_gets_another_cache(home, pngs, tmp_path):
    file = tmp_path / "l.csv"
    first = specs.dataset(_csv(file, b"path,label\n0.png,cat\n1.png,dog\n2.png,cat\n")).fingerprint()
    second = specs.dataset(_csv(file, b"path,label\n0.png,dog\n1.png,cat\n2.png,cat\n")).fingerprint()
    recaptioned = [specs.dataset(_csv(file, b"path,caption\n0.png,%s\n1.png,b b\n" % c)).fingerprint()
                   for c in (b"a a", b"c c")]
    assert first != second and recaptioned[0] != recaptioned[1]


# ---------------------------------------------------------------- item 0: decode to the size the model needs
@pytest.fixture()
def big_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / "big" / "big.jpg"
    path.parent.mkdir()
    small.resize((2048, 1536), Image.Resampling.BILINEAR).save(path, quality=80)
    return path


def test_decode_side_is_twice_the_model_input():
    from zeroshift.models.transforms import decode_side

    vlm = specs.load("tiny-clip:seed=0,size=32")
    assert decode_side(vlm.image_transform) == 64
    assert decode_side(lambda im: "not a tensor") is None


def test_embed_and_predict_decode_reduced_and_agree(home, big_jpeg, tmp_path, monkeypatch):
    from zeroshift.data.base import load_row

    sizes = []
    real = images_module._decode

    def spy(im, max_side, max_pixels, *rest):
        out = real(im, max_side, max_pixels, *rest)
        sizes.append((max_side, out.size))
        return out

    monkeypatch.setattr(images_module, "_decode", spy)
    vlm = specs.load("tiny-clip:seed=0,size=32")
    feats = embed(vlm, f"folder:{big_jpeg.parent}", out=tmp_path / "feats", progress=False, workers=0)
    result = predict(vlm, [big_jpeg], ["a", "b"])
    assert [s for s, _ in sizes] == [64, 64]  # embed, then predict: the same bound
    assert all(min(size) == 64 for _, size in sizes)  # 2048 x 1536 drafted and shrunk, never decoded whole
    with torch.no_grad():
        direct = vlm.encode_image(vlm.image_transform(load_row(specs.dataset(f"folder:{big_jpeg.parent}"), 0, 64))[None])
    assert np.allclose(np.asarray(feats)[0], direct[0].numpy(), atol=1e-5)
    assert result[0]["ranking"]


def test_cache_identity_names_the_decode_bound(home, big_jpeg, tmp_path):
    feats = embed("tiny-clip:seed=0,size=32", f"folder:{big_jpeg.parent}", out=tmp_path / "f", progress=False,
                  runtime="torch")
    assert "at most 64" in feats.manifest["transform"]


def test_sources_without_max_side_still_load():
    from zeroshift.data.base import load_row

    class Old(DataSource):  # a user's source written before max_side existed
        spec, keys = "old", ["a"]

        def load_image(self, i):
            return Image.new("RGB", (8, 8))

    assert load_row(Old(), 0, 64).size == (8, 8)
    files = FileSource("f", [], [])
    assert len(files) == 0


def test_serve_decodes_uploads_like_predict(home, big_jpeg, monkeypatch):
    from fastapi.testclient import TestClient

    from zeroshift.serve.app import create_app
    from zeroshift.serve.config import ServeConfig

    sides = []
    real = images_module._decode
    monkeypatch.setattr(images_module, "_decode", lambda im, s, p, *r: sides.append(s) or real(im, s, p, *r))
    vlm = specs.load("tiny-clip:seed=0,size=32")
    app = create_app(ServeConfig(models=("tiny",), runtime="torch"), models={"tiny": vlm})
    with TestClient(app) as client:
        r = client.post("/v1/classify", files=[("image", ("big.jpg", big_jpeg.read_bytes(), "image/jpeg"))],
                        data={"labels": "a\nb"})
    assert r.status_code == 200, r.text
    served = r.json()["results"][0]["models"][0]["ranking"]
    expected = predict(vlm, [big_jpeg], ["a", "b"])[0]["ranking"]
    assert sides == [64, 64] and [x["label"] for x in served] == [x["label"] for x in expected]
    assert np.allclose([x["prob"] for x in served], [x["prob"] for x in expected], atol=1e-5)


@pytest.mark.parametrize("argv", [
    ["embed", "--model", "tiny-clip:seed=0", "--data", "DATA", "--out", "~nosuchuser-zs/f"],
    ["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data", "DATA",
     "--method", "lstsq", "--out", "~nosuchuser-zs/r"],
    ["export", "--model", "tiny-clip:seed=0", "--labels", "a,b", "--out", "~nosuchuser-zs/x.onnx"],
])
def test_unknown_user_in_out_is_one_line_and_writes_nothing(home, pngs, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main([f"folder:{pngs}" if a == "DATA" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "~nosuchuser-zs" in err
    assert not list(tmp_path.glob("~*"))


def test_serve_answers_413_for_a_jpeg_bomb_past_pillows_own_limit():
    import io

    from zeroshift.data.base import TooManyPixels
    from zeroshift.serve.checks import decode_upload
    from zeroshift.serve.errors import TooLarge

    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    at = data.find(b"\xff\xc2") + 5  # frame header: height, width
    bomb = data[:at] + (32768).to_bytes(2, "big") * 2 + data[at + 4:]  # 1074M declared pixels
    with pytest.raises(TooLarge, match="32768x32768"):
        decode_upload(bomb, "bomb.jpg", max_pixels=40_000_000)
    with pytest.raises(TooManyPixels):
        images_module.decode_image(bomb)
