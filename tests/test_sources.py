"""Data sources built in tmp_path: folder, csv, wds, hf (saved to disk) and torchvision (FakeData)."""
import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

import zeroshift
from zeroshift.data.base import BadImage
from zeroshift.errors import DataError, MissingWeights, SpecError


def write_image(path, colour=(200, 10, 10), size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)
    return path


def image_bytes(colour, fmt="PNG", size=(9, 7)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- folder

def test_folder_with_class_subfolders(tmp_path):
    write_image(tmp_path / "sea-lion_pup" / "b.png")
    write_image(tmp_path / "sea-lion_pup" / "deeper" / "a.JPG", fmt="JPEG")
    write_image(tmp_path / "cat" / "z.webp", fmt="WEBP")
    write_image(tmp_path / "cat" / ".hidden.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty_class").mkdir()
    ds = zeroshift.dataset(f"folder:{tmp_path}")
    assert ds.classes == ["cat", "sea lion pup"]
    assert list(ds.keys) == ["cat/z.webp", "sea-lion_pup/b.png", "sea-lion_pup/deeper/a.JPG"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1]
    assert ds.captions is None
    im = ds.load_image(2)
    assert im.mode == "RGB" and im.size == (12, 10)


def test_flat_folder_is_unlabelled_and_errors_are_one_line(tmp_path):
    write_image(tmp_path / "flat" / "2.png")
    write_image(tmp_path / "flat" / "1.png")
    ds = zeroshift.dataset(f"folder:{tmp_path / 'flat'}")
    assert list(ds.keys) == ["1.png", "2.png"] and ds.labels is None and ds.classes is None
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no image files"):
        zeroshift.dataset(f"folder:{tmp_path / 'none'}")
    with pytest.raises(DataError, match="no such folder"):
        zeroshift.dataset(f"folder:{tmp_path / 'absent'}")


def test_fingerprint_follows_file_content(tmp_path):
    a = write_image(tmp_path / "c" / "a.png")
    ds = zeroshift.dataset(f"folder:{tmp_path}")
    first = ds.fingerprint()
    assert zeroshift.dataset(f"folder:{tmp_path}").fingerprint() == first
    write_image(a, colour=(1, 2, 3), size=(30, 30))
    os.utime(a, ns=(1, 1))
    assert ds.fingerprint() != first
    write_image(tmp_path / "c" / "b.png")
    assert zeroshift.dataset(f"folder:{tmp_path}").fingerprint() != ds.fingerprint()


def test_unreadable_file_in_a_folder_is_badimage(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = zeroshift.dataset(f"folder:{tmp_path}")
    with pytest.raises(BadImage, match="broken.png"):
        ds.load_image(0)


# ------------------------------------------------------------------------------------------- csv

def test_csv_with_header_labels_and_captions(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    absolute = write_image(tmp_path / "elsewhere" / "c.png")
    (tmp_path / "data.csv").write_text(
        "path,label,caption\n"
        "img/a.png,10,a red square\n"
        f"{absolute},2,another one\n"
        "img/b.png,2,\n"
        "img/a.png,,the first image again\n"
    )
    ds = zeroshift.dataset(f"csv:{tmp_path / 'data.csv'}")
    assert ds.classes == ["2", "10"]  # integer labels sort numerically
    assert ds.labels.tolist() == [1, 0, 0, -1]
    assert ds.captions == ["a red square", "another one", "", "the first image again"]
    assert list(ds.keys) == ["img/a.png", str(absolute), "img/b.png", "img/a.png#1"]
    assert ds.load_image(1).size == (12, 10)


def test_csv_headerless_two_columns(tmp_path):
    for n in "abcd":
        write_image(tmp_path / f"{n}.png")
    (tmp_path / "labels.csv").write_text("a.png,big_dog\nb.png,cat\nc.png,big_dog\n")
    ds = zeroshift.dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert ds.classes == ["big dog", "cat"] and ds.labels.tolist() == [0, 1, 0] and ds.captions is None
    (tmp_path / "pairs.csv").write_text("a.png,a photo of a dog\nb.png,\"a cat, sleeping\"\n")
    ds = zeroshift.dataset(f"csv:{tmp_path / 'pairs.csv'}")
    assert ds.captions == ["a photo of a dog", "a cat, sleeping"] and ds.labels is None
    (tmp_path / "one.csv").write_text("a.png,dog\nb.png,cat\n")
    assert zeroshift.dataset(f"csv:{tmp_path / 'one.csv'}", kind="caption").captions == ["dog", "cat"]
    assert zeroshift.dataset(f"csv:{tmp_path / 'one.csv'}").classes == ["cat", "dog"]


def test_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("a.png,x,y\n")
    with pytest.raises(DataError, match="2 columns"):
        zeroshift.dataset(f"csv:{tmp_path / 'bad.csv'}")
    with pytest.raises(DataError, match="cannot read"):
        zeroshift.dataset(f"csv:{tmp_path / 'absent.csv'}")
    (tmp_path / "gone.csv").write_text("path,label\nmissing.png,x\n")
    ds = zeroshift.dataset(f"csv:{tmp_path / 'gone.csv'}")
    with pytest.raises(BadImage, match="missing.png"):
        ds.load_image(0)


# ------------------------------------------------------------------------------------------- wds

def write_shard(path, samples, mode="w"):
    with tarfile.open(path, mode) as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_wds_shards_with_brace_expansion(tmp_path):
    write_shard(tmp_path / "shard-000.tar", [
        ("s/000", {"jpg": image_bytes((255, 0, 0), "JPEG"), "cls": b"1", "txt": b"a red thing"}),
        ("s/001", {"png": image_bytes((0, 0, 255)), "cls": b"0", "txt": b"a blue thing"}),
        ("s/002", {"cls": b"0"}),  # no image: not a row
    ])
    write_shard(tmp_path / "shard-001.tar", [  # gzip-compressed content under a .tar name
        ("s/003", {"txt": b"green", "webp": image_bytes((0, 255, 0), "WEBP"), "cls": b"1"}),
    ], mode="w:gz")
    (tmp_path / "classnames.txt").write_text("blue things\nred things\n")
    ds = zeroshift.dataset(f"wds:{tmp_path}/shard-{{000..001}}.tar")
    assert list(ds.keys) == ["shard-000.tar/s/000", "shard-000.tar/s/001", "shard-001.tar/s/003"]
    assert ds.labels.tolist() == [1, 0, 1]
    assert ds.classes == ["blue things", "red things"]
    assert ds.captions == ["a red thing", "a blue thing", "green"]
    r, g, b = ds.load_image(0).getpixel((4, 3))
    assert r > 200 and b < 50
    assert ds.load_image(1).getpixel((4, 3)) == (0, 0, 255)
    assert ds.load_image(2).getpixel((4, 3))[1] > 200
    before = ds.fingerprint()
    write_shard(tmp_path / "shard-001.tar", [("s/003", {"png": image_bytes((1, 1, 1)), "cls": b"1"})])
    os.utime(tmp_path / "shard-001.tar", ns=(5, 5))
    assert ds.fingerprint() != before


def test_wds_class_names_and_errors(tmp_path):
    write_shard(tmp_path / "a.tar", [
        ("x", {"jpeg": image_bytes((9, 9, 9), "JPEG"), "cls": b"zebra_crossing"}),
        ("y", {"png": image_bytes((9, 9, 9)), "cls": b"apple"}),
        ("z", {"png": b"not a png"}),
    ])
    ds = zeroshift.dataset(f"wds:{tmp_path}/a.tar")
    assert ds.classes == ["apple", "zebra crossing"] and ds.labels.tolist() == [1, 0, -1]
    assert ds.captions is None
    with pytest.raises(BadImage, match="z.png"):
        ds.load_image(2)
    with pytest.raises(DataError, match="missing"):
        zeroshift.dataset(f"wds:{tmp_path}/b-{{0..1}}.tar")
    with pytest.raises(SpecError, match="local"):
        zeroshift.dataset("wds:https://example.com/shard-{0..3}.tar")


# -------------------------------------------------------------------------------------------- hf

def tiny_hf_dataset(n=4):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "img": datasets.Image(),
        "label": datasets.ClassLabel(names=["apple_pie", "dog"]),
        "caption": datasets.Value("string"),
    })
    rows = {
        "img": [Image.new("L" if i % 2 else "RGB", (6 + i, 5), 80 if i % 2 else (10, 20, 30)) for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "caption": [f"picture {i}" for i in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=features)


def test_hf_saved_dataset(tmp_path):
    tiny_hf_dataset().save_to_disk(str(tmp_path / "ds"))
    ds = zeroshift.dataset(f"hf:{tmp_path / 'ds'}")
    assert len(ds) == 4 and ds.classes == ["apple pie", "dog"]
    assert ds.labels.tolist() == [0, 1, 0, 1] and ds.captions[3] == "picture 3"
    im = ds.load_image(1)
    assert im.mode == "RGB" and im.size == (7, 5) and im.getpixel((0, 0)) == (80, 80, 80)
    assert ds.fingerprint() == zeroshift.dataset(f"hf:{tmp_path / 'ds'}").fingerprint()


def test_hf_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": tiny_hf_dataset(4), "test": tiny_hf_dataset(2)}).save_to_disk(str(tmp_path / "dd"))
    assert len(zeroshift.dataset(f"hf:{tmp_path / 'dd'}")) == 2  # test by default
    train = zeroshift.dataset(f"hf:{tmp_path / 'dd'}:train")
    assert len(train) == 4 and train.spec.endswith(":train")
    with pytest.raises(DataError, match="no split 'val'"):
        zeroshift.dataset(f"hf:{tmp_path / 'dd'}:val")


def test_hf_hub_failure_is_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cifar10' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MissingWeights, match="hub") as err:
        zeroshift.dataset("hf:cifar10:test")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- torchvision

def test_torchvision_fakedata():
    pytest.importorskip("torchvision")
    ds = zeroshift.dataset("torchvision:FakeData", size=5, image_size=(3, 8, 6), num_classes=3)
    assert len(ds) == 5 and ds.labels.dtype == np.int64 and set(ds.labels.tolist()) <= {0, 1, 2}
    assert ds.classes == ["0", "1", "2"]
    im = ds.load_image(0)
    assert im.mode == "RGB" and im.size == (6, 8)


def test_torchvision_mnist_from_files_in_the_data_dir(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("ZEROSHIFT_HOME", str(tmp_path))
    raw = tmp_path / "data" / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[1, 5, 7] = 255
    for prefix in ("t10k", "train"):  # torchvision checks that both splits are there
        header = bytes([0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28])  # IDX: uint8, 3 x 28 x 28
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 9]))
    ds = zeroshift.dataset("torchvision:MNIST")
    assert ds.spec == "torchvision:MNIST:test" and ds.labels.tolist() == [7, 2, 9]
    assert ds.classes[:2] == ["0 - zero", "1 - one"]
    assert ds.load_image(1).getpixel((7, 5)) == (255, 255, 255)
    before = ds.fingerprint()
    os.utime(raw / "t10k-images-idx3-ubyte", ns=(7, 7))
    assert ds.fingerprint() != before
    assert zeroshift.dataset("torchvision:MNIST:train").spec == "torchvision:MNIST:train"


def test_torchvision_missing_data_and_unknown_class(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("ZEROSHIFT_HOME", str(tmp_path))
    with pytest.raises(MissingWeights, match="download=True") as err:
        zeroshift.dataset("torchvision:CIFAR10:test")
    assert str(tmp_path / "data" / "torchvision") in str(err.value)
    with pytest.raises(SpecError, match="NoSuchSet"):
        zeroshift.dataset("torchvision:NoSuchSet")


def test_slice_suffix_selects_rows_with_metadata():
    import numpy as np

    from zeroshift.specs import dataset

    full = dataset("mnist")
    even, odd = dataset("mnist[0::2]"), dataset("mnist[1::2]")
    assert len(even) + len(odd) == len(full) and set(even.keys).isdisjoint(odd.keys)
    assert np.array_equal(odd.labels, full.labels[1::2]) and odd.classes == full.classes
    assert even.spec == "mnist[0::2]" and even.fingerprint() != odd.fingerprint()
    assert dataset("mnist[:10]").fingerprint() == dataset("mnist[:10]").fingerprint()
    assert np.array_equal(np.asarray(dataset("mnist[-3:]").load_image(0)), np.asarray(full.load_image(len(full) - 3)))
