"""The diffusers renderer: a text-to-image pipeline draws every row once (resumably, in seeded batches);
the PNGs are kept under $ZEROSHIFT_HOME/synthetic and read back as the rows."""
from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ... import paths
from ...errors import DataError, MissingBackend, ZeroshiftError, fetch_failed
from ...io import atomic_path, clean_temp, write_json
from ..base import BadImage
from ..files import files_token
from ..images import decode_image, to_rgb
from .base import SyntheticSource
from ...paths import user_path

DIFFUSERS_VERSION = "diffusers-1"  # bump whenever the diffusers renderer's use of the pipeline changes


def _pipeline_ref(value: str) -> tuple[str, bool]:
    """pipeline=PATH|HUB_ID -> (absolute folder or hub id, whether it is a local folder)."""
    local = user_path(value)
    if local.is_dir():
        return str(local.resolve()), True
    return value, False


def _folder_token(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return files_token(folder, [p.relative_to(folder).as_posix() for p in files])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence diffusers' and transformers' loading logs and progress bars for a while."""
    libraries = []
    for name in ("diffusers", "transformers"):
        try:
            libraries.append(importlib.import_module(name).utils.logging)
        except ImportError:
            continue
    saved = [(lg.get_verbosity(), lg.is_progress_bar_enabled()) for lg in libraries]
    for lg in libraries:
        lg.set_verbosity_error()
        lg.disable_progress_bar()
    try:
        yield
    finally:
        for lg, (verbosity, bars) in zip(libraries, saved):
            lg.set_verbosity(verbosity)
            if bars:
                lg.enable_progress_bar()


class DiffusersSource(SyntheticSource):
    """A text-to-image pipeline's renders of every row, made once (resumably) and read back as PNGs."""

    renderer = "diffusers"

    def __init__(self, opts: dict[str, Any], classes: list[str], contexts: list[str]) -> None:
        opts = {**opts}
        opts["pipeline"], self.local = _pipeline_ref(opts["pipeline"])
        super().__init__(opts, classes, contexts)
        self.pipeline, self.steps, self.guidance, self.batch = (
            opts["pipeline"], opts["steps"], opts["guidance"], opts["batch"])
        self.rendered = 0  # images rendered by the last `render` call

    def _spec_keys(self) -> tuple[str, ...]:
        return super()._spec_keys() + ("pipeline", "steps", "guidance", "batch")

    def _identity(self) -> str:
        pipe = _folder_token(Path(self.pipeline)) if self.local else self.pipeline
        return f"{DIFFUSERS_VERSION}|{pipe}"

    @property
    def folder(self) -> Path:
        """Where the renders live: $ZEROSHIFT_HOME/synthetic/<spec slug>-<fingerprint>."""
        return paths.home() / "synthetic" / f"{paths.slug(self.spec)}-{self.fingerprint()}"

    def file(self, i: int) -> Path:
        return self.folder / f"{self.keys[i]}.png"

    def _load_pipeline(self) -> Any:
        try:
            import diffusers
            import torch
        except ImportError as e:
            raise MissingBackend(f"synthetic:renderer=diffusers needs diffusers ({e}): pip install diffusers") from e
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        try:
            with _quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = diffusers.DiffusionPipeline.from_pretrained(self.pipeline, torch_dtype=dtype)
        except Exception as e:
            if self.local:
                raise DataError(f"synthetic: cannot load a diffusion pipeline from {self.pipeline}: "
                                f"{_first_line(e)}") from e
            raise fetch_failed(f"synthetic pipeline={self.pipeline}",
                               "pipeline=PATH (a folder saved by DiffusionPipeline.save_pretrained)", e) from e
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def render(self, progress: bool = True) -> int:
        """Render every row that has no PNG yet (whole batches, so a resumed run draws the same images);
        returns how many were written."""
        import torch
        from tqdm.auto import tqdm

        folder = self.folder
        missing = [i for i in range(self.n) if not self.file(i).is_file()]
        self.rendered = 0
        if not missing:
            return 0
        pipe = self._load_pipeline()
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp(folder, older_than=600)  # a killed run's files, not those of another process rendering now
        write_json(folder / "spec.json", {"spec": self.spec, "fingerprint": self.fingerprint(),
                                          "prompts": self.captions}, indent=1)
        bar = tqdm(total=len(missing), unit="img", desc="synthetic", disable=not progress, dynamic_ncols=True)
        try:
            for b in sorted({i // self.batch for i in missing}):
                rows = range(b * self.batch, min((b + 1) * self.batch, self.n))
                seed = int(np.random.SeedSequence([self.seed, b]).generate_state(1)[0])
                generator = torch.Generator("cpu").manual_seed(seed)
                try:
                    with torch.inference_mode():
                        images = pipe(prompt=[self.captions[i] for i in rows], num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, generator=generator, output_type="pil").images
                except Exception as e:
                    raise ZeroshiftError(f"synthetic: the diffusion pipeline failed on rows {rows.start}-"
                                         f"{rows.stop - 1}: {_first_line(e)}") from e
                for i, im in zip(rows, images):
                    if not self.file(i).is_file():
                        _atomic_png(self.file(i), _square(to_rgb(im), self.size))
                        self.rendered += 1
                        bar.update(1)
        finally:
            bar.close()
        return self.rendered

    def load_image(self, i: int) -> Image.Image:
        path = self.file(int(i))
        if not path.is_file():
            raise BadImage(f"{path}: not rendered; open {self.spec} again to render the missing images")
        im = decode_image(path)
        return im if im.size == (self.size, self.size) else _square(im, self.size)


def _square(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to size x size."""
    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return im.resize((size, size), Image.Resampling.BICUBIC) if side != size else im


def _atomic_png(path: Path, im: Image.Image) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp, "PNG")
