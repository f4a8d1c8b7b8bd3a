"""Transfer (Zoom-shot) benchmark on the offline catalogue: fidelity to the teacher, accuracy and fit time.

All numbers come from one run. Teacher `conse:effnet-lite2+minilm`; sources `effnet-lite0` and
`open-nsfw`. Fit sets (unlabelled): Fashion-MNIST train (a prefix, --fmnist-fit rows), OpenClipart,
the even half of Tux Paint, and all of them together. Evaluation: Fashion-MNIST test and the odd half
of Tux Paint. Per bridge: accuracy (chance, 95% interval), top-1 agreement with the teacher over the
dataset's classes and over the 1000-prompt vocabulary, mean cosine to the teacher's image embedding,
Tux caption R@1/R@5 as a ratio of the teacher's, and fit seconds.

    python bench/transfer.py [--quick]      # --quick: fewer rows and rows of the table, for a smoke run
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import EvalSet, agreement_plot, features, machine, timed, write_results

import zeroshift
from zeroshift.methods.transfer import TransferConfig, encode_prompts, fit, vocabulary

HERE = Path(__file__).parent
TEACHER = "conse:effnet-lite2+minilm"


def aligned(src: zeroshift.cache.Features, ev: EvalSet) -> torch.Tensor:
    """Source features of the eval rows the teacher also has, in the teacher's row order. [N, m]"""
    pos = {int(i): k for k, i in enumerate(src.index)}
    return torch.from_numpy(src.gather(np.array([pos[int(i)] for i in ev.index])))


def run(args) -> dict:
    teacher = zeroshift.load(TEACHER, runtime="auto")
    texts, groups = vocabulary(None)
    prompts = encode_prompts(teacher, texts, groups, progress=False)
    vocab = prompts.class_weights()
    evals = [EvalSet(teacher, s, vocab) for s in ("fashion-mnist:test", "tuxpaint[1::2]")]
    fmnist_fit = f"fashion-mnist:train[:{args.fmnist_fit}]"
    fit_sets = {"fmnist": [fmnist_fit], "openclipart": ["openclipart"], "tux": ["tuxpaint[0::2]"]}
    if not args.quick:
        fit_sets["all"] = [fmnist_fit, "openclipart", "tuxpaint[0::2]"]
    rows = [{"encoder": "-", "fit": "-", "row": "teacher", "fit_s": 0.0,
             **{e.spec: e.score(e.t) for e in evals}}]
    for enc_spec in args.encoders:
        encoder = zeroshift.load(enc_spec, runtime="auto")
        src_eval = {e.spec: aligned(features(encoder, e.spec), e) for e in evals}
        for fit_name, specs in fit_sets.items():
            src = [features(encoder, s) for s in specs]
            tch = [features(teacher, s) for s in specs]
            variants = [("ttc", dict(method="ttc")), ("lstsq", dict(method="lstsq")),
                        ("zoomshot linear", dict()), ("zoomshot mlp", dict(bridge="mlp"))]
            if fit_name == "tux" or args.quick:
                variants += [("zoomshot unpaired", dict(unpaired_data="x"))]
            if fit_name == "fmnist" and not args.quick:
                variants += [("zoomshot 1% data", dict(data_fraction=0.01)), ("zoomshot 10% data", dict(data_fraction=0.1)),
                             ("zoomshot 20 epochs", dict(epochs=20))]
            for name, opts in variants:
                for s_feats, t_feats in _fit_pairs(src, tch, opts):
                    fit_opts = {k: v for k, v in opts.items() if k != "data_fraction"}
                    cfg = TransferConfig(teacher=TEACHER, encoder=enc_spec, data=tuple(specs), out="-", **fit_opts)
                    fitted = timed(lambda cfg=cfg, s=s_feats, t=t_feats: fit(
                        cfg, s, t, prompts if cfg.method == "zoomshot" else None, progress=False, vocabulary=vocab))
                    with torch.no_grad():
                        scores = {e.spec: e.score(fitted.result.bridge(src_eval[e.spec])) for e in evals}
                    rows.append({"encoder": enc_spec, "fit": fit_name, "row": name, "fit_s": fitted.best, **scores})
                    print(f"{enc_spec:13s} {fit_name:11s} {name:20s} " + "  ".join(
                        f"{k}: agree {v['agree']:.3f} acc {v['acc1']:.3f}" for k, v in scores.items()), flush=True)
    return {"rows": rows, "fmnist_fit": fmnist_fit}


def _fit_pairs(src, tch, opts):
    """The (source, teacher) features to fit on: one set as it is; unpaired, its first half through the
    source encoder and its second half through the teacher (no image seen by both); several sets as
    lists, as `transfer --data A B ...` fits them."""
    if "data_fraction" in opts:  # the library subsets before embedding; here the cached rows are subset
        n = len(src[0])
        keep = np.sort(np.random.default_rng(0).permutation(n)[:max(2, round(opts["data_fraction"] * n))])
        yield _Slice(src[0], keep), _Slice(tch[0], keep)
        return
    if len(src) == 1:
        if "unpaired_data" in opts:
            n = len(src[0])
            half = n // 2
            yield _Slice(src[0], np.arange(0, half)), _Slice(tch[0], np.arange(half, n))
            return
        yield src[0], tch[0]
        return
    yield src, tch  # fit takes several sets as they are: each split on its own, rows read end to end


class _Slice:
    """A row subset of a Features, with the reader API fit() uses."""

    def __init__(self, feats, positions: np.ndarray) -> None:
        self.feats, self.positions = feats, positions
        self.index, self.dim, self.path = feats.index[positions], feats.dim, feats.path

    def __len__(self) -> int:
        return len(self.positions)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.feats.gather(self.positions[rows])


class _Array:
    """In-memory features with the reader API fit() uses (synthetic rows for the timing run)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.dim, self.path = x, x.shape[1], "memory"
        self.index = np.arange(len(x))

    def __len__(self) -> int:
        return len(self.x)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(rows)]


def timing(rows: int, prompts) -> list[dict]:
    """Fit seconds of ttc, lstsq and zoomshot on `rows` synthetic 1280-d -> 384-d paired features."""
    rng = np.random.default_rng(0)
    src = rng.standard_normal((rows, 1280), dtype=np.float32)
    mix = rng.standard_normal((1280, 384), dtype=np.float32) / np.sqrt(1280)
    tch = (src @ mix + 0.1 * rng.standard_normal((rows, 384), dtype=np.float32)).astype(np.float32)  # [rows, 384]
    out = []
    for name, opts in (("ttc", dict(method="ttc")), ("lstsq", dict(method="lstsq")), ("zoomshot linear", {})):
        cfg = TransferConfig(teacher=TEACHER, encoder="synthetic", data="synthetic", out="-", **opts)
        seconds = timed(lambda cfg=cfg: fit(cfg, _Array(src), _Array(tch), prompts if cfg.method == "zoomshot" else None,
                                            progress=False, vocabulary=prompts.class_weights())).best
        out.append({"row": name, "rows": rows, "fit_s": seconds})
        print(f"timing {name}: {out[-1]['fit_s']:.1f} s", flush=True)
    return out


def write(result: dict, out: Path) -> None:
    rows, evals = result["rows"], ["fashion-mnist:test", "tuxpaint[1::2]"]
    teacher = rows[0]
    head = ["encoder", "fit", "row", "fit s"]
    for e in evals:
        short = "fmnist" if e.startswith("fashion") else "tux"
        head += [f"{short} acc1 [95%]", f"{short} agree", f"{short} agree@1000", f"{short} cos"]
    head += ["tux R@1 / teacher", "tux R@5 / teacher"]
    lines = ["# Transfer benchmark", "", f"Machine: {machine()}. Teacher `{TEACHER}`. One run; fit sets: "
             f"fmnist = `{result['fmnist_fit']}`, openclipart, tux = `tuxpaint[0::2]`, all = the three joined. "
             "Eval: `fashion-mnist:test` (chance {:.3f}) and `tuxpaint[1::2]` (chance {:.3f}).".format(
                 teacher[evals[0]]["chance"], teacher[evals[1]]["chance"]), "",
             "agree = top-1 agreement with the teacher over the dataset's classes; agree@1000 = over the 1000 "
             "ImageNet prompts; cos = mean cosine to the teacher's image embedding.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["encoder"], r["fit"], r["row"], f"{r['fit_s']:.2f}"]
        for e in evals:
            m = r[e]
            cells += [f"{m['acc1']:.3f} [{m['acc1_lo']:.3f}, {m['acc1_hi']:.3f}]", f"{m['agree']:.3f}",
                      f"{m['agree_vocab']:.3f}", f"{m['cosine']:.3f}"]
        t = teacher["tuxpaint[1::2]"]
        m = r["tuxpaint[1::2]"]
        cells += [f"{m['R@1'] / t['R@1']:.2f}" if t.get("R@1") else "-", f"{m['R@5'] / t['R@5']:.2f}" if t.get("R@5") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("timing"):
        lines += ["", f"Fit time on a {result['timing'][0]['rows']:,}-row synthetic cache (1280-d -> 384-d, paired):", "",
                  "| method | seconds | ttc / method |", "|---|---|---|"]
        ttc = result["timing"][0]["fit_s"]
        lines += [f"| {t['row']} | {t['fit_s']:.1f} | {ttc / t['fit_s']:.1f} |" for t in result["timing"]]
    write_results(out, "transfer", "\n".join(lines) + "\n", result)
    plot(rows, evals, out / "transfer.png")


def plot(rows: list[dict], evals: list[str], path: Path) -> None:
    agreement_plot(rows, evals, [f"{r['encoder']} | {r['fit']} | {r['row']}" for r in rows], path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["effnet-lite0", "open-nsfw"])
    p.add_argument("--fmnist-fit", type=int, default=10000, help="rows of Fashion-MNIST train to fit on")
    p.add_argument("--timing-rows", type=int, default=256000, help="rows of the synthetic timing cache (0: skip)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2000 fit rows, fewer table rows, 20k timing rows")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.quick:
        args.fmnist_fit, args.timing_rows = min(args.fmnist_fit, 2000), min(args.timing_rows, 20000)
    result = run(args)
    if args.timing_rows:
        teacher = zeroshift.load(TEACHER, runtime="auto")
        texts, groups = vocabulary(None)
        result["timing"] = timing(args.timing_rows, encode_prompts(teacher, texts, groups, progress=False))
    write(result, Path(args.out))


if __name__ == "__main__":
    main()
