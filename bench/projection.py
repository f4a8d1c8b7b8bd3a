"""Time and GPU-hours of the papers' full-scale settings, projected from measured per-item costs.

Reads OUT/costs-<tag>-<precision>.json (bench/costs.py) and OUT/diffusion_cost-<tag>.json
(bench/diffusion_cost.py), and measures here, on the CPU, what one core spends decoding and
preprocessing an ImageNet-sized JPEG (the work that must keep a GPU fed). Writes OUT/projection.md.

Each setting is counted as zeroshift runs it: frozen towers embed every image once into a cache, then
training reads the cache (transfer, locked align) or runs the student / towers per step (distill,
finetuned align). The 8-GPU column divides the per-GPU work by 8, which assumes linear scaling:
extraction shards have no collectives, but DDP's gradient all-reduce was not measured (one GPU was
lent), so treat it as a lower bound on time.

    python bench/projection.py [--tag h100] [--out bench/results]
"""
from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path

from common import timed, write_results

HERE = Path(__file__).parent
IMAGENET_TRAIN = 1_281_167
CC3M = 3_000_000  # OTTER's training pairs
SYNTHETIC = 3_000_000  # "a few million" synthetic images


@dataclass(frozen=True)
class Part:
    what: str
    items: float  # how many times the measured unit of work runs
    key: str  # measurement name in costs-*.json, or "diffusion"
    parallel: bool = True  # divides across GPUs
    decodes: bool = False  # reads each image from a JPEG (CPU work that overlaps the GPU's)


def settings(epochs_otter: int, epochs_distill: int) -> dict[str, list[Part]]:
    zoom = round(0.2 * IMAGENET_TRAIN)
    return {
        f"Zoom-shot: ResNet-50 -> CLIP ViT-B/32, 20% of ImageNet ({zoom:,} images), 1 epoch": [
            Part("embed source (ResNet-50)", zoom, "encode/resnet50", decodes=True),
            Part("embed teacher (CLIP image)", zoom, "encode/clip-image", decodes=True),
            Part("prompt vocabulary (1,000 prompts)", 1000, "encode/clip-text"),
            Part("bridge, 1 epoch", zoom, "transfer/bridge-resnet50", parallel=False)],
        f"Zoom-shot: ViT-B/16 -> CLIP ViT-B/32, 20% of ImageNet ({zoom:,} images), 1 epoch": [
            Part("embed source (ViT-B/16)", zoom, "encode/vit-b16", decodes=True),
            Part("embed teacher (CLIP image)", zoom, "encode/clip-image", decodes=True),
            Part("prompt vocabulary (1,000 prompts)", 1000, "encode/clip-text"),
            Part("bridge, 1 epoch", zoom, "transfer/bridge-vit-b16", parallel=False)],
        f"OTTER: ResNet-50 + RoBERTa-base, CC3M ({CC3M:,} pairs), {epochs_otter} epochs, every weight trained": [
            Part("pixel cache (decode once)", CC3M, "cpu-only", decodes=True),
            Part("train", CC3M * epochs_otter, "align/finetune-all")],
        "OTTER: same, zeroshift's default finetune (last block of each tower)": [
            Part("pixel cache (decode once)", CC3M, "cpu-only", decodes=True),
            Part("train", CC3M * epochs_otter, "align/finetune-last1")],
        "OTTER: same, locked towers (zeroshift's default mode)": [
            Part("embed images (ResNet-50)", CC3M, "encode/resnet50", decodes=True),
            Part("embed captions (RoBERTa-base)", CC3M, "encode/roberta-base"),
            Part(f"heads, {epochs_otter} epochs", CC3M * epochs_otter, "align/locked")],
        f"Distillation: ResNet-18 student, {SYNTHETIC:,} synthetic images, {epochs_distill} epochs": [
            Part("render images (SD 1.5 shape, 20 steps)", SYNTHETIC, "diffusion"),
            Part("teacher targets (CLIP image)", SYNTHETIC, "encode/clip-image", decodes=True),
            Part(f"student, {epochs_distill} epochs", SYNTHETIC * epochs_distill, "distill/resnet18")],
        f"Distillation: student-cnn, same images, {epochs_distill} epochs": [
            Part("render images (SD 1.5 shape, 20 steps)", SYNTHETIC, "diffusion"),
            Part("teacher targets (CLIP image)", SYNTHETIC, "encode/clip-image", decodes=True),
            Part(f"student, {epochs_distill} epochs", SYNTHETIC * epochs_distill, "distill/student-cnn")],
    }


def decode_ms(n: int = 200) -> float:
    """Milliseconds one CPU core spends decoding a 500 x 375 JPEG and making the 224 px ResNet input."""
    import torch
    from PIL import Image
    from skimage import data as samples
    from torchvision.transforms import v2 as T

    buf = io.BytesIO()
    Image.fromarray(samples.astronaut()).resize((500, 375)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    prep = T.Compose([T.PILToTensor(), T.Resize(256, antialias=True), T.CenterCrop(224),
                      T.ToDtype(torch.float32, scale=True), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return 1e3 * timed(lambda: prep(Image.open(io.BytesIO(jpeg)).convert("RGB")), n).median
    finally:
        torch.set_num_threads(threads)  # the caller's benchmark keeps its own


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def project(costs: dict, diffusion: dict | None, epochs_otter: int, epochs_distill: int, decode_s: float,
            workers: int) -> list[dict]:
    """Per setting: seconds on 1 and 8 GPUs, GPU-hours, and seconds on 1 GPU whose host decodes JPEGs
    with `workers` cores (a decoding part takes the longer of its GPU time and its decoding time)."""
    rate = {m["name"]: m["items_per_s"] for m in costs["measurements"] if m.get("items_per_s")}
    rate["cpu-only"] = float("inf")  # no GPU work
    if diffusion:
        rate["diffusion"] = diffusion["images_per_s"]
    rows = []
    for name, parts in settings(epochs_otter, epochs_distill).items():
        missing = [p.key for p in parts if p.key not in rate]
        if missing:
            rows.append({"setting": name, "missing": missing})
            continue
        one = sum(p.items / rate[p.key] for p in parts)
        fed = sum(max(p.items / rate[p.key], p.items * decode_s / workers if p.decodes else 0.0) for p in parts)
        eight = sum(p.items / rate[p.key] / (8 if p.parallel else 1) for p in parts)
        rows.append({"setting": name, "gpu1_s": one, "fed1_s": fed, "gpu8_s": eight, "gpu_hours_8": 8 * eight / 3600,
                     "parts": {p.what: p.items / rate[p.key] for p in parts}})
    return rows


def write(out: Path, tag: str, results: dict[str, list[dict]], diffusion: dict | None, decode: float, where: str,
          epochs_otter: int, epochs_distill: int, workers: int, resnet50: float) -> None:
    """OUT/projection.md and .json; `resnet50` is the bf16 ResNet-50 rate (images/s) the host's decoding must feed."""
    lines = ["# Projection: the papers' full-scale settings on 1 and 8 GPUs", "",
             f"From per-item costs measured on one {tag.upper()} (bench/costs.py, bench/diffusion_cost.py; random "
             "weights of the papers' architectures, random inputs) times the work each setting needs as zeroshift "
             "runs it. 8 GPUs: per-GPU work / 8 for everything but the bridge step (too small to shard); linear "
             "scaling is an assumption (one GPU was lent, so DDP's all-reduce is not measured). Rendering runs in fp16 in both tables. Cost: multiply "
             f"GPU-hours by your price per GPU-hour. Epochs: OTTER {epochs_otter}, distillation {epochs_distill} "
             "(options of this script).", ""]
    for precision, rows in results.items():
        lines += [f"## {precision}", "", f"| setting | 1 GPU | 1 GPU, {workers} decoding cores | 8 GPUs | GPU-hours (8) "
                  "| where the GPU time goes (1 GPU) |", "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            if "missing" in r:
                lines.append(f"| {r['setting']} | - | - | - | - | not measured: {', '.join(r['missing'])} |")
                continue
            share = ", ".join(f"{k} {100 * v / r['gpu1_s']:.0f}%" for k, v in r["parts"].items())
            lines.append(f"| {r['setting']} | {hours(r['gpu1_s'])} | {hours(r['fed1_s'])} | {hours(r['gpu8_s'])} | "
                         f"{r['gpu_hours_8']:.2f} | {share} |")
        lines.append("")
    lines += [f"Feeding the GPU: one CPU core decodes and preprocesses a 500 x 375 JPEG into a 224 px input in "
              f"{decode:.1f} ms ({where}), so ResNet-50 extraction at the bf16 rate needs about "
              f"{f'{resnet50 * decode / 1e3:.0f}' if resnet50 else '(no bf16 figure)'} cores per GPU; zeroshift's "
              "DataLoader workers scale with `--workers`.", ""]
    lines += ["Rendered images are written once as PNGs and decoded once into zeroshift's uint8 pixel cache (decode "
              "not counted); at 224 px that cache holds 150 KB per image, 450 GB for 3M images: put it on local NVMe.", ""]
    if diffusion:
        lines.append(f"Rendering: {diffusion['images_per_s']:.1f} images/s per GPU ({diffusion['precision']}, batch "
                     f"{diffusion['batch']}, {diffusion['denoise_steps']} steps with guidance).")
    write_results(out, "projection", "\n".join(lines) + "\n", {
        "tag": tag, "epochs": {"otter": epochs_otter, "distill": epochs_distill}, "decode_ms": decode,
        "decode_measured": where, "host_cores": workers, "resnet50_bf16_img_s": resnet50,
        "rendering": diffusion and {k: diffusion[k] for k in ("images_per_s", "precision", "batch", "denoise_steps")},
        "settings": results})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default="h100", help="device tag of the costs-<tag>-*.json files")
    p.add_argument("--otter-epochs", type=int, default=10)
    p.add_argument("--distill-epochs", type=int, default=10)
    p.add_argument("--decode-ms", type=float, default=None, help="per-core JPEG decode + preprocess time measured on "
                   "the GPU's host (`python -c 'from projection import decode_ms; print(decode_ms())'` in bench/); "
                   "default: the GPU host's figure in diffusion_cost-<tag>.json, else measured here")
    p.add_argument("--host-cores", type=int, default=15, help="decoding worker cores per GPU (the H100 host: 16 less one)")
    p.add_argument("--quick", action="store_true", help="accepted for the suite; the projection is always quick")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    out = Path(args.out)
    found = {pr: out / f"costs-{args.tag}-{pr}.json" for pr in ("bf16", "fp32")}
    found = {pr: json.loads(f.read_text()) for pr, f in found.items() if f.exists()}
    if not found:
        raise SystemExit(f"bench/projection.py: no {out}/costs-{args.tag}-*.json; run bench/costs.py on that device first")
    diff_file = out / f"diffusion_cost-{args.tag}.json"
    diffusion = json.loads(diff_file.read_text()) if diff_file.exists() else None
    if args.decode_ms:
        decode, where = args.decode_ms, "given"
    elif diffusion and diffusion.get("host_decode_ms"):
        decode, where = diffusion["host_decode_ms"], "measured on the GPU's host"
    else:
        decode, where = decode_ms(), "measured here, not on the GPU's host"
    results = {pr: project(c, diffusion, args.otter_epochs, args.distill_epochs, decode / 1e3, args.host_cores)
               for pr, c in found.items()}
    resnet50 = next((m["items_per_s"] for m in found.get("bf16", {}).get("measurements", [])
                     if m["name"] == "encode/resnet50" and m.get("items_per_s")), 0.0)
    write(out, args.tag, results, diffusion, decode, where, args.otter_epochs, args.distill_epochs, args.host_cores,
          resnet50)


if __name__ == "__main__":
    main()
