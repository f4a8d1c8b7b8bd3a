"""Run exported graphs where PyTorch is not installed (scripts/test.sh's second environment: onnxruntime,
numpy, Pillow and tokenizers only), and print their predictions as JSON.

    python tests/no_torch_check.py JOBS.json      # JOBS: [{"model": PATH, "labels": [...] | null, "images": [...]}]

Fails (exit 3) when torch can be imported in this environment, or was imported by the runner."""
from __future__ import annotations

import importlib.util
import json
import sys


def main() -> int:
    if importlib.util.find_spec("torch") is not None:
        print("error: torch is importable here; this check must run without it", file=sys.stderr)
        return 3
    from zeroshift.export.run import predict

    jobs = json.loads(open(sys.argv[1], encoding="utf-8").read())
    results = [predict(job["model"], job["images"], job.get("labels")) for job in jobs]
    banned = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "transformers"))
    if banned:
        print(f"error: the runner imported {', '.join(banned)}", file=sys.stderr)
        return 3
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
