"""Per-image cost of rendering synthetic training images with a Stable-Diffusion-1.5-shaped pipeline.

zeroshift's `synthetic:renderer=diffusers` renders with a local diffusers pipeline (default 20 steps,
guidance 7.5, so each step runs the UNet on the conditional and the unconditional half). Model hubs are
unreachable here, so the pieces are built from SD 1.5's published shapes with random weights: the
CLIP ViT-L/14 text encoder (77 tokens), the UNet (320-640-1280-1280, cross-attention 768) on 64 x 64
latents, and the VAE decoder to 512 x 512 pixels. Speed does not depend on the weights.

    python bench/diffusion_cost.py --device cuda --precision fp16   # -> OUT/diffusion_cost-<tag>.{json,md}
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from common import timed, write_results
from projection import decode_ms

HERE = Path(__file__).parent


def build(device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5 shape
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77))
    return [m.to(device, dtype).eval() for m in (unet, vae, text)]


@torch.no_grad()
def measure(args) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    unet, vae, text = build(args.device, dtype)
    b = args.batch
    ids = torch.randint(0, 49408, (2 * b, 77), device=args.device)  # [2B, 77] prompts + empty prompts
    cond = text(ids).last_hidden_state  # [2B, 77, 768]
    latents = torch.randn(2 * b, 4, 64, 64, device=args.device, dtype=dtype)  # CFG: both halves in one batch
    t = torch.tensor(500, device=args.device)
    calls = {"text encoder (once per batch)": lambda: text(ids),
             "UNet step (cond + uncond)": lambda: unet(latents, t, encoder_hidden_states=cond),
             "VAE decode to 512 px": lambda: vae.decode(latents[:b] / 0.18215)}
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    parts = {what: timed(fn, args.steps, args.warmup, sync).median for what, fn in calls.items()}  # seconds per call
    per_batch = parts["text encoder (once per batch)"] + args.denoise * parts["UNet step (cond + uncond)"] \
        + parts["VAE decode to 512 px"]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {"device": name, "precision": args.precision, "batch": b, "denoise_steps": args.denoise,
            "torch": torch.__version__, "parts_s": parts, "s_per_image": per_batch / b, "images_per_s": b / per_batch,
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in (("unet", unet), ("vae", vae),
                                                                             ("text", text))},
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
            "host_decode_ms": decode_ms()}  # this host's per-core JPEG decode, for bench/projection.py


def write(r: dict, out: Path) -> None:
    tag = "cpu" if r["device"] == "cpu" else (re.findall(r"[A-Z]\d{2,3}", r["device"]) or ["gpu"])[0].lower()
    lines = [f"# Synthetic-image rendering cost: {r['device']}, {r['precision']}", "",
             f"SD-1.5-shaped pipeline, random weights (UNet {r['params']['unet'] / 1e6:.0f}M, VAE "
             f"{r['params']['vae'] / 1e6:.0f}M, text {r['params']['text'] / 1e6:.0f}M parameters); batch {r['batch']} "
             f"images, {r['denoise_steps']} denoising steps with classifier-free guidance; torch {r['torch']}.", "",
             "| part | seconds per batch |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in r["parts_s"].items()]
    lines += ["", f"**{r['images_per_s']:.1f} images/s** ({r['s_per_image'] * 1e3:.1f} ms per 512 px image)"
              + (f", peak memory {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] else "") + ".",
              "", f"One core of this host decodes a 500 x 375 JPEG into a 224 px input in {r['host_decode_ms']:.2f} ms."]
    write_results(out, f"diffusion_cost-{tag}", "\n".join(lines) + "\n", r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=8, help="images per pipeline call (zeroshift's default)")
    p.add_argument("--denoise", type=int, default=20, help="denoising steps (zeroshift's default)")
    p.add_argument("--steps", type=int, default=10, help="timed calls per part")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 1, 1 timed call each")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup = 1, 1, 0
    if args.device == "cpu" and args.precision == "fp16":
        args.precision = "fp32"
    write(measure(args), Path(args.out))


if __name__ == "__main__":
    main()
