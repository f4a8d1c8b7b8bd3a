"""Run what `zeroshift export` wrote, with onnxruntime, numpy, Pillow and (for --towers exports)
tokenizers only (no PyTorch):

    python -m zeroshift.export.run classifier.onnx cat.jpg dog.png [--json] [--top 5]
    python -m zeroshift.export.run towers/image.onnx cat.jpg --labels "a cat,a dog,a car"

The sidecar beside the graph says how to bring each image to the graph's input (export/preprocess.py)
and which labels its logits are over; the output is the same as `zeroshift predict` gives for the same
model, labels and templates (`--json`: the same JSON). A classifier's labels are fixed: `--labels`, if
given, must name the same ones. A tower pair takes any labels: each label's prompts (the sidecar's
templates) go through tokenizer.json and text.onnx, are averaged and normalised into class weights W,
and logits = 100 * image embeddings @ W.T, as zeroshift.zeroshot.classifier computes them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ZeroshiftError
from ..ort import session
from . import preprocess

INPUT = "images"


def parse_labels(text: str) -> list[str]:
    """Labels from "a,b,c", newline-separated text, or a .txt file naming one per line (as zeroshift's CLI
    reads them); blank or repeated (case-insensitively) labels are a one-line ZeroshiftError."""
    if text.endswith(".txt") and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    sep = "\n" if "\n" in text else ","
    return check_labels([s.strip() for s in text.split(sep) if s.strip()])


def check_labels(labels: Sequence[str]) -> list[str]:
    """The labels, stripped; one-line ZeroshiftError for none, a blank one or a repeated one."""
    labels = [str(label).strip() for label in labels]
    if not labels or not all(labels):
        raise ZeroshiftError("--labels names no label, or a blank one: give them comma-separated, or a .txt file, "
                             "one per line")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label.casefold() in seen:
            raise ZeroshiftError(f"duplicate label {label!r} (labels {seen[label.casefold()]} and {i}); labels must differ")
        seen[label.casefold()] = i
    return labels


def _verified(path: Path) -> dict:
    """The graph's sidecar, refused unless it describes this very file (its sha256)."""
    info = preprocess.read_sidecar(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if info.get("sha256") != digest:
        raise ZeroshiftError(f"{path} is not the graph its sidecar {path.name}.json describes (sha256 differs): "
                             "re-export it, or copy the graph and sidecar that belong together")
    return info


def graph_input(pixels: np.ndarray, info: dict) -> np.ndarray:
    """What the graph takes, from uint8 pixels [N, H, W, 3]: the pixels themselves, or for an export with
    `--input float` the recipe's arithmetic done here: float [N, 3, H, W]."""
    if info["input"]["dtype"] == "uint8":
        return pixels
    rule = info.get("preprocess")
    if not rule:
        raise ZeroshiftError(f"{info['file']} takes float images after {info.get('image_transform')}, which its "
                             "sidecar cannot describe; run it from Python, or re-export with pixels in")
    p = rule["pixels"]
    mean, std = np.asarray(p["mean"], np.float32), np.asarray(p["std"], np.float32)
    x = (pixels.astype(np.float32) * np.float32(p["scale"]) - mean) / std  # [N, H, W, 3]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # [N, 3, H, W]


class Classifier:
    """An exported classifier: pixels -> logits [N, C] over the labels fixed in the graph."""

    def __init__(self, path: Path, info: dict, threads: int | None = None) -> None:
        self.path, self.info = path, info
        self.labels = list(info["labels"])
        self.session = session(path, threads)

    def check_labels(self, labels: Sequence[str] | None) -> list[str]:
        """The graph's labels; `labels`, if given, must be the same ones (in any order)."""
        if labels is not None and sorted(map(str.casefold, labels)) != sorted(map(str.casefold, self.labels)):
            raise ZeroshiftError(f"{self.path.name} classifies over its fixed labels ({', '.join(self.labels)}), "
                                 f"not --labels ({', '.join(labels)}): re-export with those labels, or export "
                                 "with --towers to choose labels at run time")
        return self.labels

    def logits(self, pixels: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        return self.session.run(["logits"], {INPUT: graph_input(pixels, self.info)})[0]  # [N, C]


def tokenize(tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """`texts` through a tokenizers.Tokenizer (truncation and padding as its tokenizer.json sets them):
    input_ids and attention_mask, int64 [N, L]."""
    encoded = tokenizer.encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}


def text_embeddings(sess, tokenizer, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """Unit-normalised text embeddings [N, d] from text.onnx."""
    return np.concatenate([sess.run(["embeddings"], tokenize(tokenizer, texts[i:i + batch]))[0]
                           for i in range(0, len(texts), batch)])


def class_weights(sess, tokenizer, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Per label: its prompts embedded, normalised, averaged, normalised: [C, d] (zeroshot_weights' recipe)."""
    prompts = [t.format(c=label) for label in labels for t in templates]  # class-major, C * P
    emb = text_embeddings(sess, tokenizer, prompts).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.reshape(len(labels), len(templates), -1).mean(axis=1)  # [C, d]
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)


def load_tokenizer(path: Path):
    """tokenizer.json through the tokenizers library; one line when it is missing or not installed."""
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError:
        raise ZeroshiftError("a tower pair needs the tokenizers package: pip install tokenizers") from None
    if not path.is_file():
        raise ZeroshiftError(f"no tokenizer at {path}: a tower pair is image.onnx, text.onnx and tokenizer.json "
                             "in one folder, as `zeroshift export --towers` wrote them")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise ZeroshiftError(f"{path} is not a tokenizer.json the tokenizers library reads: {str(e)[:200]}") from None


class Towers:
    """An exported tower pair: pixels -> image embeddings, labels -> class weights, logits = 100 z W^T."""

    def __init__(self, path: Path, info: dict, threads: int | None = None) -> None:
        self.path, self.info = path, info
        self.session = session(path, threads)
        text = path.with_name(info["text"])
        self.text_info = _verified(text)
        self.text_session = session(text, threads)
        self.tokenizer = load_tokenizer(path.with_name(self.text_info["tokenizer"]["file"]))
        self._weights: dict[tuple[str, ...], np.ndarray] = {}

    def check_labels(self, labels: Sequence[str] | None) -> list[str]:
        labels = labels if labels is not None else self.info.get("labels")
        if not labels:
            raise ZeroshiftError(f"{self.path.name} is a tower pair exported without default labels: give --labels")
        return list(labels)

    def logits(self, pixels: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        key = tuple(labels)
        if key not in self._weights:
            self._weights[key] = class_weights(self.text_session, self.tokenizer, labels, self.info["prompts"])
        z = self.session.run(["embeddings"], {INPUT: graph_input(pixels, self.info)})[0]  # [N, d] unit rows
        return 100.0 * z @ self._weights[key].T  # [N, C]


def load(model: str | Path, threads: int | None = None) -> Classifier | Towers:
    """The runner for an exported graph (or a --towers folder), from its sidecar's kind."""
    path = Path(model)
    if path.is_dir():
        path = path / "image.onnx"
    info = _verified(path)
    kind = info.get("kind", "classifier")
    if kind == "classifier":
        return Classifier(path, info, threads)
    if kind == "image-tower":
        return Towers(path, info, threads)
    if kind == "text-tower":
        raise ZeroshiftError(f"{path} is the text half of a tower pair: give its image.onnx (or the folder)")
    raise ZeroshiftError(f"{path} is a {kind} graph, which this runner cannot run on images")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict(model: str | Path, images: Sequence[str], labels: Sequence[str] | None = None,
            threads: int | None = None, batch_size: int = 32) -> list[dict]:
    """For each image `{"image", "ranking": [{"label", "prob"}, ...]}` best first, or `{"image", "error"}`
    when it cannot be decoded or its scores are not finite: what zeroshift.predict gives."""
    if not images:
        raise ZeroshiftError("no images given")
    runner = load(model, threads)
    names = runner.check_labels(check_labels(labels) if labels is not None else None)
    rule = runner.info.get("preprocess")
    if not rule:
        raise ZeroshiftError(f"{runner.path.name}'s sidecar has no preprocessing recipe (its image transform "
                             "is a backend's own function); run it from Python")
    results: list[dict] = [{"image": str(p)} for p in images]
    for start in range(0, len(images), batch_size):
        chunk = list(range(start, min(start + batch_size, len(images))))
        pixels, errors = preprocess.load_batch([images[i] for i in chunk], rule)  # [n, H, W, 3] uint8
        for k, reason in errors.items():
            results[chunk[k]]["error"] = reason
        ok = [i for k, i in enumerate(chunk) if k not in errors]
        if not ok:
            continue
        probs = softmax(runner.logits(pixels, names))  # [n, C]
        for row, i in zip(probs, ok):
            if not np.isfinite(row).all():
                results[i]["error"] = ("the model gave non-finite scores (NaN or inf) for this image; "
                                       "its features overflowed or the model is broken")
                continue
            order = np.argsort(-row, kind="stable")
            results[i]["ranking"] = [{"label": names[j], "prob": round(float(row[j]), 6)} for j in order]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeroshift.export.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a graph `zeroshift export` wrote (its sidecar MODEL.json beside it), or a "
                                      "--towers folder")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--labels", help="labels, comma-separated (or a .txt file, one per line)")
    parser.add_argument("--top", type=int, default=5, help="labels shown per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print zeroshift predict's JSON instead of text")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    try:
        labels = parse_labels(args.labels) if args.labels is not None else None
        results = predict(args.model, args.images, labels, threads=args.threads)
    except ZeroshiftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "results": results}, indent=2, allow_nan=False))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: skipped ({r['error']})")
                continue
            top = ", ".join(f"{x['label']} {x['prob']:.3f}" for x in r["ranking"][: args.top])
            print(f"{r['image']}: {top}")
    failed = [r for r in results if "error" in r]
    if len(failed) == len(results):
        image, reason = failed[0]["image"], str(failed[0]["error"]).splitlines()[0]
        print(f"error: none of the {len(results)} image(s) could be classified; the first, "
              f"{image}: {reason.removeprefix(f'{image}: ')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
