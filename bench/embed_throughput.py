"""End-to-end embed throughput against model-only references, measured side by side in one run.

For each encoder, at one batch size, on the same images:
  eager   PyTorch eager forward on ready tensors (model only)
  ort     onnxruntime forward on ready tensors (model only)
  e2e     zeroshift.embed into a fresh cache: decode, transform, forward, write
ort and e2e alternate (best of --repeats each); eager runs last.
Target (issue 2): e2e >= 0.8 x ort, hence >= 5x eager.

    python bench/embed_throughput.py [--models effnet-lite0 effnet-lite2] [--rows 1024]
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import in_turns, machine, timed, write_results

import zeroshift
from zeroshift.cache import embed
from zeroshift.data.base import Subset
from zeroshift.models.runtime import accelerate

HERE = Path(__file__).parent


def measure(spec: str, data: str, rows: int, batch_size: int, repeats: int = 2) -> dict:
    source = zeroshift.dataset(data)
    subset = Subset(source, np.arange(min(rows, len(source))))
    torch_enc = zeroshift.load(spec, runtime="torch")
    fast = accelerate(torch_enc, "onnx")
    ready = torch.stack([torch_enc.image_transform(subset.load_image(i)) for i in range(len(subset))])  # [R, 3, H, W]
    batches = list(ready.split(batch_size))
    n = len(subset)

    def every_batch(fn) -> None:
        for b in batches:
            fn(b)

    caches = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        fast(batches[0])  # warm-ups: the ONNX session, then a small embed
        embed(fast, Subset(source, np.arange(batch_size)), Path(tmp) / "warm", batch_size=batch_size, progress=False)
        turns = in_turns({  # alternate the two, best of each: both see the same machine state
            "ort": lambda: every_batch(fast),
            "e2e": lambda: embed(fast, subset, Path(tmp) / f"cache{next(caches)}", batch_size=batch_size,
                                 progress=False)}, repeats)
        feats = turns["e2e"].result
        same = np.allclose(feats.numpy(), torch.cat([fast(b) for b in batches]).numpy(), atol=1e-4)
    with torch.inference_mode():  # last: eager's thread pool is left spinning after it, which slows others
        torch_enc(batches[0])  # warm-up
        eager = n / timed(lambda: every_batch(torch_enc)).best
    ort, e2e = n / turns["ort"].best, n / turns["e2e"].best
    return {"model": spec, "data": data, "rows": len(subset), "batch_size": batch_size,
            "eager_img_s": eager, "ort_img_s": ort, "e2e_img_s": e2e,
            "e2e_over_ort": e2e / ort, "e2e_over_eager": e2e / eager, "ort_over_eager": ort / eager,
            "e2e_matches_ort": bool(same), "workers": feats.summary.get("workers")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["effnet-lite0", "effnet-lite2"])
    p.add_argument("--data", default="fashion-mnist:test")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="alternating ort / e2e runs; the best of each counts")
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    results = [measure(m, a.data, a.rows, a.batch_size, a.repeats) for m in a.models]
    head = ["model", "rows", "batch", "eager img/s", "ort img/s", "e2e img/s", "e2e/ort", "e2e/eager", "ort/eager"]
    lines = ["# Embed throughput", "", f"Machine: {machine()}. Data: `{a.data}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append(f"| {r['model']} | {r['rows']} | {r['batch_size']} | {r['eager_img_s']:.1f} | {r['ort_img_s']:.1f} | "
                     f"{r['e2e_img_s']:.1f} | {r['e2e_over_ort']:.2f} | {r['e2e_over_eager']:.2f} | {r['ort_over_eager']:.2f} |")
    lines += ["", "Target: e2e/ort >= 0.8 (so e2e/eager >= 5)."]
    write_results(a.out, "embed_throughput", "\n".join(lines) + "\n", {"results": results})


if __name__ == "__main__":
    main()
