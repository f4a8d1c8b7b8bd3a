"""folder:PATH, images in class sub-folders (the layout of torchvision's ImageFolder) or one flat folder."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, SpecError
from .files import FileSource, walk_images
from .images import DEFAULT_MAX_PIXELS, is_image_file
from .labels import readable
from ..paths import user_path


def _existing_dir(arg: str, scheme: str) -> Path:
    if not arg:
        raise SpecError(f"'{scheme}:' needs a path, e.g. {scheme}:path/to/images")
    root = user_path(arg)
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
