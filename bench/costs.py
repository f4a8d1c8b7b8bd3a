"""Per-item cost of each method's work at the papers' full-scale architectures (random weights), on one device.

Everything runs through zeroshift's own code: towers from `zeroshift.load` specs, the methods' Task classes
and losses, and the shared training loop (`train.loop.train`, with its autocast, gradient clipping, AdamW
and per-step checks); inputs are random tensors of the right shapes. docs/scaling.md projects the papers'
settings onto 1 and 8 GPUs from these figures.

  encode    inference items/s, as `embed` runs a tower (encode_image on preprocessed batches): CLIP
            ViT-B/32 image and text towers (openclip:ViT-B-32@random), ResNet-50 and ViT-B/16 (timm,
            Zoom-shot's sources), and RoBERTa-base with mean pooling (OTTER's DeCLUTR-sci-base; 32 tokens)
  transfer  Zoom-shot bridge rows/s: BridgeTask with the paired defaults (mse + pgkd over 1000 class vectors)
  distill   student images/s: DistillTask, l2, for ResNet-18 (224 px) and student-cnn, on cached teacher
            targets (what zeroshift does) and with the ViT-B/32 teacher run inside the step
  align     OTTER pairs/s: AlignTask, ot loss, ResNet-50 + RoBERTa-base finetuned (every parameter, and
            zeroshift's default last block), and locked (heads on cached features); the OT targets' and
            Sinkhorn's own time
Composites add the seconds per item of their parts (Zoom-shot = encode source + encode teacher + bridge).
Tokenising, decoding and resizing images (CPU work) are not measured; models are built on the CPU first.

    python bench/costs.py --device cuda --precision bf16   # -> bench/results/costs-h100-bf16.{json,md}
    python bench/costs.py --device cpu --quick             # smoke test: tiny batches, 2 steps each
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import conditions, write_results
from cost_steps import (
    SOURCES,
    STUDENTS,
    Bench,
    align_finetune,
    align_locked,
    align_targets,
    bridge_step,
    distill_step,
    encode_clip_text,
    encode_image,
    encode_roberta,
    teacher_vlm,
)

import zeroshift
from zeroshift.cli.options import add_options, from_args
from zeroshift.errors import ZeroshiftError
from zeroshift.train.loop import autocast_dtype, resolve_device

HERE = Path(__file__).parent
QUICK = {"steps": 2, "warmup": 1, "encode_batch": 4, "transfer_batch": 32, "distill_batch": 4, "align_batch": 4}
GROUPS = ("encode", "transfer", "distill", "align")
PRECISION_CHOICES = ("fp32", "bf16", "fp16")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class CostsConfig:
    """Every option of bench/costs.py."""

    device: str = field(default_factory=_default_device, metadata={
        "help": "device to measure on (cuda when present)", "choices": ["cpu", "cuda"]})
    precision: str | None = field(default=None, metadata={
        "help": "autocast precision (default: fp32 on cpu, bf16 on cuda)", "choices": list(PRECISION_CHOICES)})
    steps: int = field(default=20, metadata={"help": "timed steps per measurement"})
    warmup: int = field(default=5, metadata={"help": "untimed steps before them"})
    encode_batch: int = field(default=256, metadata={"help": "images or sentences per encode call"})
    transfer_batch: int = field(default=256, metadata={"help": "rows per bridge step (zoomshot's default)"})
    distill_batch: int = field(default=256, metadata={"help": "images per distill step"})
    align_batch: int = field(default=512, metadata={"help": "pairs per align step (align's default)"})
    quick: bool = field(default=False, metadata={"help": "smoke test: tiny batches, 2 steps each"})
    only: tuple[str, ...] = field(default=(), metadata={
        "help": f"measure only these groups ({', '.join(GROUPS)}) or measurement names"})
    out: str = field(default=str(HERE / "results"), metadata={"help": "folder for costs-<device>-<precision>.json/.md"})

    def __post_init__(self) -> None:
        if self.precision is None:
            object.__setattr__(self, "precision", "bf16" if self.device == "cuda" else "fp32")
        if self.precision not in PRECISION_CHOICES or self.device not in ("cpu", "cuda"):
            raise ZeroshiftError(f"--device is cpu or cuda and --precision one of {', '.join(PRECISION_CHOICES)}")
        if self.quick:
            for key, value in QUICK.items():
                object.__setattr__(self, key, value if key in ("steps", "warmup") else min(getattr(self, key), value))
        if min(self.steps, self.encode_batch, self.transfer_batch) < 1 or self.warmup < 0:
            raise ZeroshiftError("--steps and the batch sizes must be at least 1, --warmup at least 0")
        if min(self.distill_batch, self.align_batch) < 2:
            raise ZeroshiftError("--distill-batch and --align-batch must be at least 2 (the losses compare rows)")
        known = set(GROUPS) | {m.name for m in MEASUREMENTS}
        unknown = [n for n in self.only if n not in known]
        if unknown:
            raise ZeroshiftError(f"unknown --only name {unknown[0]!r}; use {', '.join(GROUPS)} or one of "
                                 f"{', '.join(m.name for m in MEASUREMENTS)}")


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Measurement:
    name: str
    group: str
    run: Callable[[Bench], dict]


MEASUREMENTS = [
    Measurement("encode/clip-image", "encode", encode_image(lambda: teacher_vlm().image,
                                                            "CLIP ViT-B/32 image tower (open_clip, random weights)")),
    Measurement("encode/clip-text", "encode", encode_clip_text),
    Measurement("encode/resnet50", "encode", encode_image(SOURCES["resnet50"][0], "ResNet-50 (timm), pooled 2048-d")),
    Measurement("encode/vit-b16", "encode", encode_image(SOURCES["vit-b16"][0], "ViT-B/16 (timm), 768-d")),
    Measurement("encode/roberta-base", "encode", encode_roberta),
    Measurement("transfer/bridge-vit-b16", "transfer", bridge_step("vit-b16")),
    Measurement("transfer/bridge-resnet50", "transfer", bridge_step("resnet50")),
    Measurement("distill/resnet18", "distill", distill_step("resnet18", inline_teacher=False)),
    Measurement("distill/resnet18+teacher", "distill", distill_step("resnet18", inline_teacher=True)),
    Measurement("distill/student-cnn", "distill", distill_step("student-cnn", inline_teacher=False)),
    Measurement("distill/student-cnn+teacher", "distill", distill_step("student-cnn", inline_teacher=True)),
    Measurement("align/finetune-all", "align", align_finetune(everything=True)),
    Measurement("align/finetune-last1", "align", align_finetune(everything=False)),
    Measurement("align/locked", "align", align_locked),
    Measurement("align/ot-targets", "align", align_targets),
]


def composites(results: dict[str, dict]) -> list[dict]:
    """Per-item seconds of each method's whole work from its measured parts (skipped where a part is missing)."""
    ok = {k: v for k, v in results.items() if "items_per_s" in v}
    per = {k: 1.0 / v["items_per_s"] for k, v in ok.items()}  # seconds per item
    specs = [  # (name, what, {part: measurement}, the measurement timing the whole in one step or None)
        (f"zoomshot/{s}", f"Zoom-shot, per fit image and epoch: {s} + CLIP image encode, bridge step",
         {"source encode": f"encode/{s}", "teacher encode": "encode/clip-image", "bridge step": f"transfer/bridge-{s}"},
         None)
        for s in SOURCES
    ] + [
        (f"distill/{s} (epoch with teacher)", f"CLIP image forward + {s} step, per image",
         {"teacher forward": "encode/clip-image", "student step": f"distill/{s}"}, f"distill/{s}+teacher")
        for s in STUDENTS
    ] + [
        ("align/locked (epoch with towers)", "OTTER locked, per pair: both towers' features + heads step",
         {"image encode": "encode/resnet50", "text encode": "encode/roberta-base", "heads step": "align/locked"}, None),
    ]
    out = []
    for name, what, parts, whole in specs:
        if all(p in per for p in parts.values()):
            out.append(_composite(name, what, {k: per[p] for k, p in parts.items()},
                                  measured=ok.get(whole, {}).get("items_per_s")))
    if "align/ot-targets" in ok:
        t = ok["align/ot-targets"]
        targets, sinkhorn = 1.0 / t["items_per_s"], 1e-3 * t["sinkhorn_ms_median"] / t["batch"]
        for step in ("align/finetune-all", "align/finetune-last1", "align/locked"):
            if step in per and ok[step]["batch"] == t["batch"]:
                rest = max(per[step] - targets, 0.0)
                out.append(_composite(f"{step} (split)", f"{step}'s step: Sinkhorn, rest of the ot targets, the rest",
                                      {"sinkhorn": sinkhorn, "ot targets w/o sinkhorn": max(targets - sinkhorn, 0.0),
                                       "rest of step": rest}))
    return out


def _composite(name: str, what: str, parts: dict[str, float], measured: float | None = None) -> dict:
    total = sum(parts.values())
    row = {"name": name, "what": what, "items_per_s": 1.0 / total, "s_per_1m": 1e6 * total,
           "parts_s_per_1m": {k: 1e6 * v for k, v in parts.items()},
           "fractions": {k: v / total for k, v in parts.items()}}
    if measured is not None:
        row["measured_items_per_s"] = measured
    return row


# ---------------------------------------------------------------- running and writing
def device_tag(device: torch.device) -> str:
    """'cpu', or the GPU family from its name ('NVIDIA H100 80GB HBM3' -> 'h100')."""
    if device.type != "cuda":
        return "cpu"
    words = re.split(r"[^a-z0-9]+", torch.cuda.get_device_name(device).lower())
    family = next((w for w in words if re.fullmatch(r"[a-z]+\d+[a-z]*", w) and w != "nvidia"), None)
    return family or "-".join(w for w in words if w and w != "nvidia") or "cuda"


def measure(m: Measurement, b: Bench) -> dict:
    """One measurement, with the peak GPU memory it took; a failure (out of memory, ...) is recorded."""
    if b.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(b.device)
    t0 = time.perf_counter()
    try:
        row = m.run(b)
    except Exception as e:  # noqa: BLE001 - any failure is a result; the other measurements go on
        row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    row = {"name": m.name, "group": m.group, **row, "wall_s": round(time.perf_counter() - t0, 2)}
    if b.device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(b.device) / 2**30
    gc.collect()
    if b.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['name']:30s} FAILED ({row['wall_s']:.0f} s): {row['error']}"
    mem = f"  peak {row['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in row else ""
    return (f"{row['name']:30s} batch {row['batch']:4d}  {row['items_per_s']:10.1f} {row['unit']}/s  "
            f"{row['s_per_1m']:10.1f} s/1M  step {row['step_ms_median']:8.2f} ms{mem}  ({row['wall_s']:.0f} s)")


def environment(b: Bench) -> dict:
    import timm
    import transformers

    try:
        import open_clip

        open_clip_version = open_clip.__version__
    except ImportError:
        open_clip_version = None
    started = conditions()  # the load average at the end is the writer's
    return {
        "device": torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else platform.processor() or "cpu",
        "device_tag": device_tag(b.device), "machine": started["machine"], "precision": b.cfg.precision,
        "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
        "transformers": transformers.__version__, "open_clip": open_clip_version, "zeroshift": zeroshift.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "date": started["date"], "options": dataclasses.asdict(b.cfg),
    }


def markdown(env: dict, rows: list[dict], combined: list[dict]) -> str:
    c = env["options"]
    lines = [f"# zeroshift per-item costs: {env['device']}, {env['precision']}", "",
             (f"{env['machine']}; timm {env['timm']}, transformers {env['transformers']}, open_clip "
              f"{env['open_clip']}; {c['warmup']} warm-up + {c['steps']} timed steps each; {env['date']}. Random "
              "weights, random inputs; data loading and tokenising not included (except the CLIP text row)."), "",
             "| what | batch | items/s | s per 1M items | peak memory |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        mem = f"{r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else "-"
        if "error" in r:
            lines.append(f"| `{r['name']}` | | failed: {r['error'][:120]} | | {mem} |")
        else:
            lines.append(f"| `{r['name']}`: {r['what']} | {r['batch']} | {r['items_per_s']:,.1f} {r['unit']}/s | "
                         f"{r['s_per_1m']:,.1f} | {mem} |")
    if combined:
        lines += ["", "Composites (seconds per item of the parts added; fractions of the total):", "",
                  "| composite | items/s | s per 1M items | parts |", "|---|---:|---:|---|"]
        for r in combined:
            parts = ", ".join(f"{k} {100 * f:.1f}%" for k, f in r["fractions"].items())
            check = f" (measured in one step: {r['measured_items_per_s']:,.1f}/s)" if "measured_items_per_s" in r else ""
            lines.append(f"| `{r['name']}`: {r['what']} | {r['items_per_s']:,.1f}{check} | {r['s_per_1m']:,.1f} | {parts} |")
    return "\n".join(lines) + "\n"


def run(cfg: CostsConfig) -> Path:
    """Measure, print a line per measurement, write OUT/costs-<device>-<precision>.json and .md; returns the json."""
    device = resolve_device(cfg.device)
    b = Bench(cfg, device, autocast_dtype(cfg.precision, device))
    env = environment(b)
    print(f"{env['device']} ({env['device_tag']}), {cfg.precision}, torch {env['torch']}; batches encode "
          f"{cfg.encode_batch}, transfer {cfg.transfer_batch}, distill {cfg.distill_batch}, align {cfg.align_batch}; "
          f"{cfg.warmup} + {cfg.steps} steps", flush=True)
    chosen = [m for m in MEASUREMENTS if not cfg.only or m.name in cfg.only or m.group in cfg.only]
    rows = []
    for m in chosen:
        rows.append(measure(m, b))
        print(_line(rows[-1]), flush=True)
    combined = composites({r["name"]: r for r in rows})
    for r in combined:
        parts = ", ".join(f"{k} {100 * f:.1f}%" for k, f in r["fractions"].items())
        print(f"{r['name']:40s} {r['items_per_s']:10.1f}/s  {r['s_per_1m']:10.1f} s/1M  ({parts})", flush=True)
    name = f"costs-{env['device_tag']}-{cfg.precision}"
    path = write_results(cfg.out, name, markdown(env, rows, combined), {**env, "measurements": rows,
                                                                        "composites": combined})
    print(f"wrote {path.with_suffix('')}.json and .md", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(p, CostsConfig)
    try:
        run(from_args(CostsConfig, p.parse_args(argv)))
    except ZeroshiftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
