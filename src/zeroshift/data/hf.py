"""hf:NAME[:SPLIT], a Hugging Face `datasets` dataset from the hub, a local folder or `save_to_disk`.

`datasets` is imported only when a source is opened (an optional backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, MissingWeights, SpecError
from .base import BadImage, DataSource
from .images import DEFAULT_MAX_PIXELS, decode_image, load_rgb
from .labels import index_labels, words
from ..paths import user_path


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
                labels, self.classes = index_labels(["" if v is None else str(v) for v in values])
                self.labels = np.asarray(labels, dtype=np.int64)
        if caption_column is not None:
            captions = list(ds[caption_column])
            self.captions = [(c[0] if c else "") if isinstance(c, list) else (c or "") for c in captions]

    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        value, side = self._images[i][self._column], max_side or self.max_side
        if isinstance(value, dict):  # an undecoded datasets.Image: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return decode_image(value["bytes"], side, self.max_pixels)
            if value.get("path"):
                return decode_image(value["path"], side, self.max_pixels)
            raise BadImage(f"{self.spec} row {i}: no image bytes or path")
        if value is None:
            raise BadImage(f"{self.spec} row {i}: no image")
        return load_rgb(value, side, self.max_pixels)

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
    local = user_path(name)
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
