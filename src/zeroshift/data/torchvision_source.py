"""torchvision:CLASS[:SPLIT], a torchvision dataset read from the data folder, never downloaded implicitly."""
from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import paths
from ..errors import DataError, MissingWeights, SpecError
from .base import BadImage, DataSource
from .files import stat_token
from .images import DEFAULT_MAX_PIXELS, load_rgb
from .labels import words


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

    def load_image(self, i: int, max_side: int | None = None) -> Image.Image:
        try:
            image = self.ds[i][0]
        except (OSError, ValueError, SyntaxError) as e:
            raise BadImage(f"{self.spec} row {i}: {e}") from e
        return load_rgb(image, max_side or self.max_side, self.max_pixels)

    def _content_token(self) -> str:
        h = hashlib.sha1(self.labels.tobytes())
        folder = _dataset_folder(self.ds)
        if folder is not None:  # the dataset's own files on disk, not others under the shared root
            h.update(stat_token(sorted(Path(d, f) for d, _, fs in os.walk(folder) for f in fs)).encode())
        return h.hexdigest()


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
