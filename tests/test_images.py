"""Image decoding: every PIL mode to RGB, bounded decoding, and BadImage (never anything else) for bad files."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from zeroshift.data import images
from zeroshift.data.base import BadImage
from zeroshift.data.images import decode_image, load_rgb, to_rgb


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)  # [H, W, 3]


def test_16bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # [1, 4]
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = pixels(decode_image(data))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_32bit_int_and_float_greys():
    out = pixels(to_rgb(Image.fromarray(np.array([[0, 65535]], dtype=np.int32))))  # mode I
    np.testing.assert_array_equal(out[0, :, 1], [0, 255])
    out = pixels(to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))))  # mode F
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])


def test_grey_and_bilevel():
    grey = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(pixels(decode_image(encode(grey)))[0, :, 2], [0, 100, 255])
    bilevel = Image.new("1", (4, 2), 0)
    bilevel.putpixel((3, 1), 1)
    out = pixels(decode_image(encode(bilevel)))
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 3].tolist() == [255, 255, 255]


def test_palette_with_transparency_is_composited_on_white():
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    im.putpixel((1, 0), 1)
    data = encode(im, transparency=0)
    out = pixels(decode_image(data))
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent red -> white
    assert out[0, 1].tolist() == [0, 0, 255]


def test_rgba_and_la_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    out = pixels(decode_image(encode(rgba)))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert abs(out[0, 2, 0] - 127) <= 1
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (0, 255)])
    out = pixels(decode_image(encode(la)))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 0]


def test_cmyk_jpeg_adobe_inverted_comes_back_red():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    im = Image.open(io.BytesIO(data))
    assert im.mode == "CMYK" and "adobe" in im.info  # Pillow writes Adobe (inverted) CMYK
    r, g, b = pixels(decode_image(data))[8, 8]
    assert r > 230 and g < 30 and b < 30


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (16, 8), (255, 0, 0))
    im.paste((0, 0, 255), (8, 0, 16, 8))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(im, "JPEG", exif=exif, quality=95))
    assert out.size == (8, 16)
    top, bottom = pixels(out)[2, 4], pixels(out)[13, 4]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_max_side_bounds_the_shorter_side_and_jpeg_uses_draft(monkeypatch):
    big = Image.new("RGB", (1600, 1200), (10, 200, 30))
    drafts = []
    real_jpeg_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or real_jpeg_draft(self, mode, size))
    out = decode_image(encode(big, "JPEG"), max_side=100)
    assert out.size == (133, 100)
    assert drafts == [(200, 150)]  # decoded at 1/8 scale, never at full size
    assert decode_image(encode(big), max_side=100).size == (133, 100)  # PNG: decoded, then shrunk
    assert decode_image(encode(Image.new("RGB", (50, 40))), max_side=100).size == (50, 40)  # never enlarged


def test_oversized_png_is_refused_without_decoding(monkeypatch):
    data = encode(Image.new("RGBA", (200, 100)))
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_load(self))
    with pytest.raises(BadImage, match="exceeds the decode bound"):
        decode_image(data, max_pixels=10_000)
    assert loads == []
    # A JPEG that large is decoded at reduced scale instead of being refused.
    out = decode_image(encode(Image.new("RGB", (200, 100)), "JPEG"), max_pixels=10_000)
    assert out.size[0] * out.size[1] <= 10_000 and out.size == (100, 50)


def test_pillow_bomb_limits_give_no_warning_and_no_crash(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warn above 1000 px, refuse above 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(encode(Image.new("L", (40, 40))), max_pixels=5000).size == (40, 40)
        with pytest.raises(BadImage, match="hard limit"):
            decode_image(encode(Image.new("L", (60, 60))), max_pixels=5000)
        # A JPEG beyond Pillow's limit still decodes through draft().
        out = decode_image(encode(Image.new("RGB", (80, 80)), "JPEG"), max_pixels=1600)
        assert out.size == (40, 40)


@pytest.mark.parametrize("case", ["truncated-png", "truncated-jpeg", "random", "empty-bytes", "text"])
def test_bad_bytes_raise_badimage(case):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = {
        "truncated-png": encode(photo)[:2000],
        "truncated-jpeg": encode(photo, "JPEG")[:600],
        "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty-bytes": b"",
        "text": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    }[case]
    with pytest.raises(BadImage):
        decode_image(data)


def test_bad_files_raise_badimage(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "half.jpg").write_bytes(encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:300])
    (tmp_path / "folder.png").mkdir()
    for name in ["empty.png", "half.jpg", "missing.png", "folder.png"]:
        with pytest.raises(BadImage, match=name):
            decode_image(tmp_path / name)


def test_load_rgb_accepts_arrays_and_images():
    assert load_rgb(np.zeros((5, 7), dtype=np.uint8)).size == (7, 5)
    chw = np.ones((3, 4, 6), dtype=np.float32)  # [C, H, W] in [0, 1]
    out = load_rgb(chw)
    assert out.size == (6, 4) and pixels(out).min() == 255
    assert load_rgb(Image.new("RGBA", (300, 200)), max_side=50).size == (75, 50)
    with pytest.raises(BadImage):
        load_rgb(np.zeros((2, 3, 4, 5), dtype=np.uint8))


def test_draft_scale_choice():
    assert images._draft_scale((1600, 1200), 100, 10**9) == 8
    assert images._draft_scale((1600, 1200), 300, 10**9) == 4
    assert images._draft_scale((1600, 1200), 2000, 10**9) == 1
    assert images._draft_scale((1600, 1200), None, 10**9) == 1
    assert images._draft_scale((1600, 1200), None, 500_000) == 2


def _declare_size(data: bytes, side: int) -> bytes:
    """The JPEG `data` with its frame header (SOF0 or SOF2) claiming side x side pixels (the scan stays small)."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i >= 0:
            at = i + 5  # marker (2), length (2), precision (1), then height and width (2 each)
            return data[:at] + side.to_bytes(2, "big") * 2 + data[at + 4:]
    raise AssertionError("no frame header")


def test_progressive_jpeg_is_bounded_by_its_declared_size(monkeypatch):
    # a progressive JPEG costs about 2 bytes per declared pixel however small it is drafted (issue 17, item 0)
    small = Image.new("RGB", (64, 64), (200, 30, 30))
    side = 12000  # 144M declared pixels: above the 89M decode bound, below Pillow's own hard limit
    bomb = _declare_size(encode(small, "JPEG", progressive=True), side)  # a few KB
    baseline = _declare_size(encode(small, "JPEG"), side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert Image.open(io.BytesIO(bomb)).info.get("progressive")
        assert not Image.open(io.BytesIO(baseline)).info.get("progressive")
    loads = []
    with monkeypatch.context() as m:
        m.setattr(JpegImagePlugin.JpegImageFile, "load", lambda self: loads.append(self))
        with pytest.raises(BadImage, match=f"progressive JPEG of {side}x{side}"):
            decode_image(bomb, max_side=224)
    assert loads == []  # refused from the header, before any coefficient is decoded
    assert min(decode_image(baseline, max_side=224).size) == 224  # baseline: drafted to 1/8 (1500 px a side)
    assert pixels(decode_image(encode(small, "JPEG", progressive=True)))[0, 0, 0] > 150  # small ones still decode


def test_serve_refuses_a_progressive_jpeg_bomb_as_too_large():
    from zeroshift.serve.checks import decode_upload
    from zeroshift.serve.errors import TooLarge

    bomb = _declare_size(encode(Image.new("RGB", (64, 64)), "JPEG", progressive=True), 12000)
    with pytest.raises(TooLarge, match="12000x12000"):
        decode_upload(bomb, "bomb.jpg", max_pixels=40_000_000)
