"""Data sources named by spec: folder:, csv:, hf:, torchvision:, wds:.

Each constructor is `fn(arg: str, **kwargs) -> DataSource`. Every source reads its metadata (keys,
classes, labels, captions) when opened, without decoding an image; `load_image(i)` decodes one row
through `images.decode_image`, bounded by the source's `max_side` / `max_pixels`, which a caller that
knows its model's input size may set.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import paths
from ..errors import DataError, MissingWeights, SpecError
from .base import BadImage, DataSource
from .images import DEFAULT_MAX_PIXELS, decode_image, is_image_file, load_rgb


def readable(name: str) -> str:
    """A folder or class identifier as words: 'apple_pie' / 'apple-pie' -> 'apple pie'."""
    return " ".join(re.sub(r"[_\-]+", " ", name).split())


def words(name: str) -> str:
    """A class name given as text, with underscores as spaces: 'aquarium_fish' -> 'aquarium fish'."""
    return " ".join(name.replace("_", " ").split())


def _sort_labels(values: Sequence[str]) -> list[str]:
    """Distinct label strings sorted, numerically when all are integers (so '10' follows '9')."""
    distinct = set(values)
    if all(re.fullmatch(r"-?\d+", v) for v in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def _stat_token(files: Sequence[Path]) -> str:
    """Identity of files on disk: size and mtime of each (a changed file changes the token)."""
    h = hashlib.sha1()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"-;")
    return h.hexdigest()


class FileSource(DataSource):
    """Rows backed by image files on disk (one path per row)."""

    def __init__(
        self,
        spec: str,
        files: Sequence[Path],
        keys: Sequence[str],
        labels: Sequence[int] | np.ndarray | None = None,
        classes: Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
        max_side: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.spec = spec
        self.files = [Path(f) for f in files]
        self.keys = list(keys)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes = None if classes is None else list(classes)
        self.captions = None if captions is None else list(captions)
        self.max_side = max_side
        self.max_pixels = max_pixels
        if len(self.keys) != len(self.files):
            raise DataError(f"{spec}: {len(self.keys)} keys for {len(self.files)} files")

    def load_image(self, i: int) -> Image.Image:
        return decode_image(self.files[i], self.max_side, self.max_pixels)

    def _content_token(self) -> str:
        return _stat_token(self.files)


def walk_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path; hidden entries skipped.

    Symbolic links are followed (a linked file is a row of its own), link loops are not.
    """
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # deterministic walk
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _existing_dir(arg: str, scheme: str) -> Path:
    if not arg:
        raise SpecError(f"'{scheme}:' needs a path, e.g. {scheme}:path/to/images")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"{scheme}:{arg}: no such folder")
    return root


def folder(arg: str, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileSource:
    """folder:PATH. Class sub-folders (searched recursively) give classes and labels; a flat folder
    of images is unlabelled (images beside class folders are ignored, as torchvision's ImageFolder
    does). Class names are the folder names as words ('sea_lion' -> 'sea lion')."""
    root = _existing_dir(arg, "folder")
    spec = f"folder:{arg}"
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, walk_images(d)) for d in subdirs]
    per_class = [(name, files) for name, files in per_class if files]
    if per_class:
        files = [f for _, fs in per_class for f in fs]
        labels = [i for i, (_, fs) in enumerate(per_class) for _ in fs]
        classes = [readable(name) for name, _ in per_class]
    else:
        files = sorted((f for f in root.iterdir() if f.is_file() and not f.name.startswith(".") and is_image_file(f)),
                       key=lambda p: p.name)
        labels, classes = None, None
    if not files:
        raise DataError(f"{spec}: no image files (.jpg, .png, .webp, ...) found")
    keys = [f.relative_to(root).as_posix() for f in files]
    return FileSource(spec, files, keys, labels, classes, None, max_side, max_pixels)


_PATH_COLUMNS = ("path", "image", "image_path", "filepath", "file", "filename")
_LABEL_COLUMNS = ("label", "class", "category")
_CAPTION_COLUMNS = ("caption", "text", "title")


def _pick(header: list[str], names: Sequence[str]) -> int | None:
    lower = [h.strip().lower() for h in header]
    return next((lower.index(n) for n in names if n in lower), None)


def _second_column_kind(values: list[str]) -> str:
    """Guess whether a headerless second column holds labels or captions: classes repeat, captions
    are mostly unique sentences."""
    words = np.mean([len(v.split()) for v in values]) if values else 0.0
    if len(set(values)) < len(values):
        return "caption" if words > 4 else "label"
    return "caption" if any(len(v.split()) > 1 for v in values) else "label"


def csv_source(arg: str, kind: str | None = None, max_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> FileSource:
    """csv:FILE. A header naming `path` and `label` and/or `caption` columns, or a headerless
    two-column `path,label` / `path,caption` file (`kind` = 'label' | 'caption' says which; guessed
    otherwise). Relative paths are resolved against the CSV's folder; label strings become classes,
    sorted (numerically when they are integers). Rows keep the file's order."""
    if not arg:
        raise SpecError("'csv:' needs a file, e.g. csv:pairs.csv")
    file = Path(arg).expanduser()
    spec = f"csv:{arg}"
    try:
        # Bytes that are not UTF-8 survive as surrogates: the row stays, and users of its text (align's
        # captions) can skip and count it instead of losing the whole file.
        with open(file, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except OSError as e:
        raise DataError(f"{spec}: cannot read the file ({e.strerror or e})") from e
    except csv.Error as e:
        raise DataError(f"{spec}: not a readable CSV file ({e})") from e
    if not rows:
        raise DataError(f"{spec}: the file holds no rows")
    header = rows[0]
    p_col = _pick(header, _PATH_COLUMNS)
    if p_col is not None:
        l_col, c_col = _pick(header, _LABEL_COLUMNS), _pick(header, _CAPTION_COLUMNS)
        rows = rows[1:]
        if kind is not None:
            raise DataError(f"{spec}: kind= is only for headerless files; this one has a header")
    else:
        if any(len(r) != 2 for r in rows):
            raise DataError(f"{spec}: without a header line (path,label or path,caption) every row must have 2 columns")
        kind = kind or _second_column_kind([r[1] for r in rows])
        if kind not in ("label", "caption"):
            raise SpecError(f"{spec}: kind must be 'label' or 'caption', not {kind!r}")
        p_col, l_col, c_col = 0, (1 if kind == "label" else None), (1 if kind == "caption" else None)
    if not rows:
        raise DataError(f"{spec}: the file holds a header but no rows")
    width = max(c for c in (p_col, l_col, c_col) if c is not None) + 1
    short = next((n for n, r in enumerate(rows) if len(r) < width), None)
    if short is not None:
        raise DataError(f"{spec}: data row {short + 1} has {len(rows[short])} columns, expected {width}")

    base = file.parent
    files, keys, seen = [], [], {}
    for r in rows:
        rel = r[p_col].strip()
        files.append(Path(rel) if os.path.isabs(rel) else base / rel)
        n = seen.get(rel, 0)
        seen[rel] = n + 1
        keys.append(rel if n == 0 else f"{rel}#{n}")  # the same image listed again (several captions)
    labels = classes = captions = None
    if l_col is not None:
        names = [r[l_col].strip() for r in rows]
        classes = _sort_labels([n for n in names if n])
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[n] if n else -1 for n in names]
        classes = [words(c) for c in classes]
    if c_col is not None:
        captions = [r[c_col].strip() for r in rows]
    return FileSource(spec, files, keys, labels, classes, captions, max_side, max_pixels)


# ---------------------------------------------------------------------------------------- hf:

class HFSource(DataSource):
    """Rows of a Hugging Face `datasets.Dataset`; images stay encoded until `load_image`."""

    def __init__(self, spec: str, ds: Any, image_column: str, label_column: str | None,
                 caption_column: str | None, max_side: int | None, max_pixels: int) -> None:
        import datasets

        self.spec = spec
        self.max_side, self.max_pixels = max_side, max_pixels
        self.keys = [f"{i}" for i in range(len(ds))]
        self._fp = getattr(ds, "_fingerprint", "") or ""
        feature = ds.features[image_column]
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self._images = ds.select_columns([image_column])
        self._column = image_column
        if label_column is not None:
            values = list(ds[label_column])
            names = getattr(ds.features[label_column], "names", None)
            if all(v is None or isinstance(v, (int, np.integer)) for v in values):
                self.labels = np.asarray([-1 if v is None else v for v in values], dtype=np.int64)
                self.classes = [words(n) for n in names] if names else None
            else:  # label strings
                names = _sort_labels([str(v) for v in values if v is not None and str(v)])
                position = {n: k for k, n in enumerate(names)}
                index = [-1 if v is None else position.get(str(v), -1) for v in values]
                self.labels = np.asarray(index, dtype=np.int64)
                self.classes = [words(n) for n in names]
        if caption_column is not None:
            captions = list(ds[caption_column])
            self.captions = [(c[0] if c else "") if isinstance(c, list) else (c or "") for c in captions]

    def load_image(self, i: int) -> Image.Image:
        value = self._images[i][self._column]
        if isinstance(value, dict):  # an undecoded datasets.Image: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return decode_image(value["bytes"], self.max_side, self.max_pixels)
            if value.get("path"):
                return decode_image(value["path"], self.max_side, self.max_pixels)
            raise BadImage(f"{self.spec} row {i}: no image bytes or path")
        if value is None:
            raise BadImage(f"{self.spec} row {i}: no image")
        return load_rgb(value, self.max_side, self.max_pixels)

    def _content_token(self) -> str:
        return self._fp


def _hf_columns(ds: Any, spec: str, image_column: str | None, label_column: str | None,
                caption_column: str | None) -> tuple[str, str | None, str | None]:
    import datasets

    features = ds.features
    names = list(features)
    if image_column is None:
        image_column = next((n for n in names if isinstance(features[n], datasets.Image)), None)
        image_column = image_column or next((n for n in ("image", "img", "jpg", "png") if n in names), None)
    if image_column is None or image_column not in names:
        raise DataError(f"{spec}: no image column among {names}; pass image_column=")
    if label_column is None:
        class_labels = [n for n in names if isinstance(features[n], datasets.ClassLabel)]
        preferred = [n for n in ("label", "labels", "fine_label") if n in class_labels]
        label_column = (preferred or class_labels or [None])[0]
        if label_column is None and "label" in names:
            label_column = "label"
    if caption_column is None:
        caption_column = next((n for n in ("caption", "captions", "text", "sentence") if n in names), None)
    for col in (label_column, caption_column):
        if col is not None and col not in names:
            raise DataError(f"{spec}: no column {col!r} among {names}")
    return image_column, label_column, caption_column


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def hf(arg: str, image_column: str | None = None, label_column: str | None = None,
       caption_column: str | None = None, max_side: int | None = None,
       max_pixels: int = DEFAULT_MAX_PIXELS, **load_kwargs: Any) -> HFSource:
    """hf:NAME[:SPLIT]. NAME is a hub dataset, a local dataset folder, or a folder written by
    `save_to_disk`. SPLIT defaults to 'test' when there is one, else the only split."""
    import datasets

    name, _, split = arg.partition(":")
    if not name:
        raise SpecError("'hf:' needs a dataset name, e.g. hf:cifar10:test")
    spec = f"hf:{arg}"
    local = Path(name).expanduser()
    try:
        if local.is_dir() and _is_saved_dataset(local):
            ds = datasets.load_from_disk(str(local))
        elif local.is_dir():
            ds = datasets.load_dataset(str(local), **load_kwargs)
        else:
            ds = datasets.load_dataset(name, split=split or None, **load_kwargs)
    except (ConnectionError, TimeoutError) as e:
        raise MissingWeights(
            f"{spec}: the dataset could not be fetched from the Hugging Face hub ({type(e).__name__}); "
            "check the name and the network, or give a local folder written by save_to_disk"
        ) from e
    except FileNotFoundError as e:
        raise MissingWeights(f"{spec}: no such dataset on the hub or on disk ({str(e).splitlines()[0][:200]})") from e
    except ValueError as e:  # an unknown split, a malformed folder
        raise DataError(f"{spec}: {str(e).splitlines()[0][:300]}") from e
    if isinstance(ds, (datasets.DatasetDict, dict)):
        splits = sorted(ds)
        if split and split not in ds:
            raise DataError(f"{spec}: no split {split!r}; splits: {', '.join(splits)}")
        if not split:
            split = "test" if "test" in ds else (splits[0] if len(splits) == 1 else "")
            if not split:
                raise DataError(f"{spec}: several splits, none named 'test'; name one: " +
                                ", ".join(f"hf:{name}:{s}" for s in splits))
        ds = ds[split]
    elif split and local.is_dir() and _is_saved_dataset(local):
        raise DataError(f"{spec}: the saved dataset at {name} has no splits; drop ':{split}'")
    if len(ds) == 0:
        raise DataError(f"{spec}: the dataset is empty")
    cols = _hf_columns(ds, spec, image_column, label_column, caption_column)
    return HFSource(spec, ds, *cols, max_side=max_side, max_pixels=max_pixels)


# ------------------------------------------------------------------------------- torchvision:

def _targets(ds: Any) -> list[int] | None:
    """Labels from a torchvision dataset's attributes, without decoding images."""
    for attr in ("targets", "labels", "_labels", "y"):
        value = getattr(ds, attr, None)
        if value is not None and not callable(value):
            a = np.asarray(value)
            if a.ndim == 1 and len(a) == len(ds) and np.issubdtype(a.dtype, np.integer):
                return a.tolist()
    if hasattr(ds, "samples"):  # ImageFolder-style: [(path, target)]
        return [int(t) for _, t in ds.samples]
    return None


class TorchvisionSource(DataSource):
    """A torchvision dataset (images as PIL, labels from its targets)."""

    def __init__(self, spec: str, ds: Any, max_side: int | None, max_pixels: int) -> None:
        self.spec = spec
        self.ds = ds
        self.max_side, self.max_pixels = max_side, max_pixels
        self.keys = [str(i) for i in range(len(ds))]
        classes = getattr(ds, "classes", None)
        self.classes = [words(str(c)) for c in classes] if classes else None
        targets = _targets(ds)
        if targets is None:  # e.g. FakeData: labels exist only per item
            targets = [int(ds[i][1]) for i in range(len(ds))]
        self.labels = np.asarray(targets, dtype=np.int64)
        if self.classes is None and len(self.labels):
            self.classes = [str(c) for c in range(int(self.labels.max()) + 1)]

    def load_image(self, i: int) -> Image.Image:
        try:
            image = self.ds[i][0]
        except (OSError, ValueError, SyntaxError) as e:
            raise BadImage(f"{self.spec} row {i}: {e}") from e
        return load_rgb(image, self.max_side, self.max_pixels)

    def _content_token(self) -> str:
        h = hashlib.sha1(self.labels.tobytes())
        folder = _dataset_folder(self.ds)
        if folder is not None:  # the dataset's own files on disk, not others under the shared root
            h.update(_stat_token(sorted(Path(d, f) for d, _, fs in os.walk(folder) for f in fs)).encode())
        return h.hexdigest()


def _dataset_folder(ds: Any) -> Path | None:
    """The folder a torchvision dataset reads its files from, where it says."""
    for attr in ("_base_folder", "raw_folder"):
        value = getattr(ds, attr, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    root, base = getattr(ds, "root", None), getattr(ds, "base_folder", None)
    if isinstance(root, (str, os.PathLike)):
        return Path(root, base) if isinstance(base, str) else Path(root)
    return None


def torchvision_source(arg: str, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                       **dataset_kwargs: Any) -> TorchvisionSource:
    """torchvision:CLASS[:SPLIT] from `<data dir>/torchvision`, never downloaded implicitly.
    SPLIT defaults to 'test'; datasets with a `train` flag get train=(SPLIT != 'test')."""
    import torchvision

    name, _, split = arg.partition(":")
    split = split or "test"
    spec = f"torchvision:{name}:{split}"
    cls = getattr(torchvision.datasets, name, None)
    if not inspect.isclass(cls):
        raise SpecError(f"torchvision:{name}: torchvision.datasets has no dataset class {name!r}")
    params = inspect.signature(cls).parameters
    root = paths.data_dir() / "torchvision"
    kwargs: dict[str, Any] = {}
    if "root" in params:
        kwargs["root"] = str(root)
    if "split" in params:
        kwargs["split"] = split
    elif "train" in params:
        kwargs["train"] = split != "test"
    if "download" in params:
        kwargs["download"] = False
    kwargs.update(dataset_kwargs)
    try:
        ds = cls(**kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        how = f"python -c \"import torchvision; torchvision.datasets.{name}('{root}', download=True)\""
        raise MissingWeights(f"{spec}: the data is not in {root}; download it once with: {how}") from e
    except (ValueError, TypeError) as e:
        raise DataError(f"{spec}: {str(e).splitlines()[0][:300]}") from e
    if len(ds) == 0:
        raise DataError(f"{spec}: the dataset is empty")
    return TorchvisionSource(spec, ds, max_side, max_pixels)


# ----------------------------------------------------------------------------------------- wds:

_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset keys: 'dir/abc.seg.jpg' -> ('dir/abc', 'seg.jpg') (split at the first dot of the base name)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


class WdsSource(DataSource):
    """Samples of WebDataset tar shards, indexed once (headers + small cls/txt members)."""

    def __init__(self, spec: str, shards: list[Path], index: list[tuple[int, str, int, int]],
                 labels: list[int] | None, classes: list[str] | None, captions: list[str] | None,
                 max_side: int | None, max_pixels: int) -> None:
        self.spec = spec
        self.shards = shards
        self._index = index  # (shard, member name, data offset, size) per row
        self.keys = [f"{shards[s].name}/{_split_member(m)[0]}" for s, m, _, _ in index]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes, self.captions = classes, captions
        self.max_side, self.max_pixels = max_side, max_pixels

    def load_image(self, i: int) -> Image.Image:
        s, member, offset, size = self._index[i]
        shard = self.shards[s]
        try:
            if offset >= 0:  # uncompressed tar: seek straight to the member's bytes
                with open(shard, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(size)
            else:
                with tarfile.open(shard) as tf:
                    fh = tf.extractfile(member)
                    data = fh.read() if fh is not None else b""
        except (OSError, tarfile.TarError, KeyError) as e:
            raise BadImage(f"{shard}:{member}: cannot read ({e})") from e
        if len(data) != size:
            raise BadImage(f"{shard}:{member}: truncated ({len(data)} of {size} bytes)")
        try:
            return decode_image(data, self.max_side, self.max_pixels)
        except BadImage as e:
            raise BadImage(f"{shard}:{member}: {str(e).split(': ', 1)[-1]}") from None

    def _content_token(self) -> str:
        return _stat_token(self.shards)


def _expand_shards(pattern: str) -> list[Path]:
    from braceexpand import braceexpand

    if re.match(r"^[a-z][a-z0-9+.-]+:", pattern):
        raise SpecError(f"wds:{pattern}: only local tar shards are read; download remote shards first")
    return [Path(p).expanduser() for p in braceexpand(pattern)]


def _find_classnames(shards: list[Path]) -> list[str] | None:
    """CLIP_benchmark keeps `classnames.txt` beside the shards or one folder up."""
    for folder in (shards[0].parent, shards[0].parent.parent):
        f = folder / "classnames.txt"
        if f.is_file():
            return [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return None


def wds(arg: str, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> WdsSource:
    """wds:PATTERN, e.g. wds:data/shard-{000..009}.tar. Image from jpg/png/jpeg/webp, label from
    cls (integers, or names that become sorted classes; names from classnames.txt when present),
    caption from txt. Samples keep the shards' order."""
    if not arg:
        raise SpecError("'wds:' needs a shard pattern, e.g. wds:shards-{000..009}.tar")
    spec = f"wds:{arg}"
    shards = _expand_shards(arg)
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise DataError(f"{spec}: {len(missing)} of {len(shards)} shards missing, first: {missing[0]}")
    index: list[tuple[int, str, int, int]] = []
    cls_text: list[str | None] = []
    txt: list[str | None] = []
    for s, shard in enumerate(shards):
        try:
            samples, order, compressed = _index_shard(shard)
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"{spec}: {shard} is not a readable tar file ({e})") from e
        for key in order:
            members = samples[key]
            image = next((members[e] for e in _WDS_IMAGE_EXTS if e in members), None)
            if image is None:
                continue
            index.append((s, image[0], -1 if compressed else image[1], image[2]))
            cls_text.append(members["cls"][3] if "cls" in members else None)
            txt.append(members["txt"][3] if "txt" in members else None)
    if not index:
        raise DataError(f"{spec}: no samples with an image ({'/'.join(_WDS_IMAGE_EXTS)}) in {len(shards)} shards")

    labels = classes = captions = None
    if any(c is not None for c in cls_text):
        values = [c or "" for c in cls_text]
        if all(re.fullmatch(r"-?\d+", v) for v in values if v):
            labels = [int(v) if v else -1 for v in values]
            classes = _find_classnames(shards)
            if classes is None and max(labels) >= 0:
                classes = [str(c) for c in range(max(labels) + 1)]
        else:
            classes = _sort_labels([v for v in values if v])
            position = {c: i for i, c in enumerate(classes)}
            labels = [position[v] if v else -1 for v in values]
            classes = [words(c) for c in classes]
    if any(t is not None for t in txt):
        captions = [t or "" for t in txt]
    return WdsSource(spec, shards, index, labels, classes, captions, max_side, max_pixels)


def _index_shard(shard: Path, small: int = 1 << 16) -> tuple[dict, list[str], bool]:
    """One pass over a tar: key -> ext -> (name, data offset, size, text of a small cls/txt member)."""
    try:
        tf, compressed = tarfile.open(shard, "r:"), False
    except tarfile.ReadError:
        tf, compressed = tarfile.open(shard, "r:*"), True  # gz/bz2/xz: members are read by name
    samples: dict[str, dict[str, tuple[str, int, int, str | None]]] = {}
    order: list[str] = []
    with tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = _split_member(m.name)
            if key not in samples:
                samples[key] = {}
                order.append(key)
            text = None
            if ext in ("cls", "txt") and m.size <= small:
                fh = tf.extractfile(m)
                text = fh.read().decode("utf-8", "surrogateescape").strip() if fh is not None else None
            samples[key].setdefault(ext, (m.name, m.offset_data, m.size, text))
    return samples, order, compressed


__all__ = [
    "FileSource", "HFSource", "TorchvisionSource", "WdsSource", "folder", "csv_source", "hf",
    "torchvision_source", "wds", "readable", "words", "walk_images",
]
