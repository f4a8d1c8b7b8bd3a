"""One served model: its VLM loaded by name, its /v1/models entry, its worker thread and batcher."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import specs
from ..errors import ZeroshiftError
from ..models.transforms import decode_side
from ..models.vlm import VLM
from .batcher import Batcher
from .config import ServeConfig


def _scheme_kind(spec: str) -> str | None:
    """The registered scheme kind ('vlm', 'image', 'text') of a spec string, or None if it does not parse."""
    try:
        return specs.parse(spec, specs.MODEL_SCHEMES)[0].kind
    except ZeroshiftError:
        return None


def describe(name: str, vlm: VLM) -> dict[str, Any]:
    """The /v1/models entry of a served model: kind, teacher, dims, parameters, results, model card.
    `parameters` is {"image": N, "text": M}: the image path, run once per image, and the text side, run
    once per label set (a bridged or distilled model's text side is its teacher's text tower), each None
    where the model does not say (VLM.cost). A run's facts come from the loaded model (runs.load_run
    keeps its folder and config on it)."""
    info: dict[str, Any] = {"spec": name, "kind": _scheme_kind(name) or "model", "teacher": None,
                            "dims": {"joint": int(vlm.dim)}, "parameters": None, "results": [], "card": None}
    cost = getattr(vlm, "cost", None)
    if callable(cost):
        sides = cost()
        info["parameters"] = {side: sides[side]["parameters"] for side in ("image", "text")}
    from ..cards import body
    from ..runfolder import CARD, read_config
    from ..zeroshot.records import read_records

    folder, config = getattr(vlm, "run_folder", None), getattr(vlm, "run_config", None)
    if folder is None and name.startswith("run:"):  # a model handed in under a run's name, not loaded by it
        folder = Path(name[4:]) if Path(name[4:]).is_dir() else Path(name[4:].rpartition("@")[0])
        config = read_config(folder) if folder.is_dir() else None
    if folder is None or not isinstance(config, dict):
        return info

    info["kind"] = str(config.get("kind") or "model")
    info["teacher"] = config["teacher"] if isinstance(config.get("teacher"), str) else None
    dims = config.get("dims") if isinstance(config.get("dims"), dict) else {}
    info["dims"].update({k: v for k, v in dims.items() if isinstance(v, int) and not isinstance(v, bool)})
    try:
        records = read_records(folder / "results") if (folder / "results").is_dir() else []
    except (OSError, ValueError):
        records = []
    keep = ("dataset", "model", "pretrained", "task", "metrics", "language")
    info["results"] = [{k: r[k] for k in keep if k in r} for r in records]
    card = folder / CARD
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else None
    info["card"] = None if text is None else body(text)[:100_000]  # what a reader sees, without the hub's YAML
    return info


@dataclass
class Served:
    """One served model: its name, the VLM, its /v1/models entry, its worker thread and batcher."""

    name: str
    vlm: VLM
    info: dict
    executor: ThreadPoolExecutor
    batcher: Batcher
    decode_side: int | None  # uploads are decoded to this shorter side, as predict and embed decode

    @classmethod
    def start(cls, name: str, vlm: VLM, index: int, config: ServeConfig) -> Served:
        """Serve `vlm` as `name` (the `index`-th model): check it is a VLM, give it its own worker thread
        and batcher, describe it. ZeroshiftError for an object without the VLM methods."""
        for attr in ("encode_image", "encode_text", "image_transform", "dim"):
            if not hasattr(vlm, attr):
                raise ZeroshiftError(f"{name} loads as a {type(vlm).__name__} without {attr}; serve needs a VLM")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"zeroshift-model-{index}")
        batcher = Batcher(vlm.encode_image, executor, config.batch_size, config.batch_window_ms / 1000)
        return cls(name, vlm, describe(name, vlm), executor, batcher, decode_side(vlm.image_transform))


def load_vlm(name: str, runtime: str) -> VLM:
    """The VLM a served model's spec names; SpecError, before loading, for a spec of another kind of model."""
    specs.require(name, "vlm", "model", command="serve")
    return specs.load(name, runtime=runtime)
