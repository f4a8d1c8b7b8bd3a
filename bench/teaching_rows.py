"""The row plans of bench/teaching.py: which runs each group makes, with which options and fit data."""
from __future__ import annotations

from zeroshift.specs import dataset

CONSE = "conse:effnet-lite2+minilm"
STUDENT = "student-cnn"
WIDTHS = ("student-cnn:width=16", "student-cnn", "student-cnn:width=64")
TRUNK = "effnet-lite2:blocks=11,size=64"  # the teacher tower's first 11 pretrained blocks: 7% of its parameters
MIX = "mix=0.5"  # the mixed-view rows' recipe: half the views blended with another fit image
TRUNK_LRS = (1e-3, 1e-2, 3e-2)  # learning rates beside distill's 3e-3, compared by the held-out score
BRIDGE_ENCODERS = ("effnet-lite1", "effnet-lite2")  # sources beside --encoder; the last is the aligned teacher's tower


def domains(args) -> dict[str, dict]:
    """Fit images (unlabelled) and the test set of each domain."""
    return {"fmnist": {"fit": (f"fashion-mnist:train[:{args.fmnist}]",), "test": args.fmnist_test},
            "tux": {"fit": ("tuxpaint[0::2]", args.clipart), "test": "tuxpaint[1::2]"}}


def distill_rows(args) -> list[dict]:
    """(name, domain, options) of every student row; steps are equal within the short rows."""
    e, k = args.epochs, args.views
    rows = []
    for d in ("fmnist", "tux"):
        rows += [
            {"row": "inconsistent K=1 (student crops)", "domain": d, "views": 1, "student_augment": "light", "epochs": e},
            {"row": "consistent K=1", "domain": d, "views": 1, "epochs": e},
            {"row": f"consistent K={k}", "domain": d, "views": k, "epochs": max(1, e // k)},
            {"row": f"consistent K={k}, long ({args.long}x)", "domain": d, "views": k, "epochs": max(1, e // k) * args.long},
        ]
    return rows


def more_images_row(args, student: str | None = None) -> dict:
    """Fashion-MNIST at K=1 on 4x the fit images for the short rows' epochs: the long row's compute."""
    more = 4 * args.fmnist
    row = {"row": f"consistent K=1, {more} fit images" + (f", {student}" if student else ""), "domain": "fmnist",
           "views": 1, "epochs": args.epochs, "fit": (f"fashion-mnist:train[:{more}]",)}
    return {**row, "student": student} if student else row


def extra_rows(args) -> list[dict]:
    """More views and the other student widths on Fashion-MNIST at the short rows' steps; more fit images
    (Fashion-MNIST: 4x the images at the long row's steps, so data and views compete at equal compute) and
    synthetic renders added to the few Tux Paint images (Popp et al.: diversity)."""
    e, k = args.epochs, args.views
    rows = [{"row": "consistent K=16", "domain": "fmnist", "views": 16, "epochs": max(1, e // 16)}]
    rows += [{"row": f"consistent K={k}, {spec}", "domain": "fmnist", "views": k, "student": spec,
              "epochs": max(1, e // k)} for spec in (WIDTHS[0], WIDTHS[2])]
    rows.append(more_images_row(args))
    renders = f"synthetic:classes=tuxpaint,n={args.synthetic},size=96"
    rows.append({"row": f"consistent K={k}, + {args.synthetic} synthetic renders", "domain": "tux", "views": k,
                 "epochs": max(1, e // k), "fit": (*domains(args)["tux"]["fit"], renders)})
    return rows


def labels_rows(args) -> list[dict]:
    """The short and long consistent rows again with the KL over the test set's class names beside l2
    (`distill --labels`: the names a user states, never an image's label)."""
    e, k = args.epochs, args.views
    short = [{"row": "consistent K=1, l2 + kl over the labels", "domain": d, "views": 1, "epochs": e, "labels": True}
             for d in ("fmnist", "tux")]
    return short + [{"row": f"consistent K={k}, long ({args.long}x), l2 + kl over the labels", "domain": d, "views": k,
                     "epochs": max(1, e // k) * args.long, "labels": True} for d in ("fmnist", "tux")]


def trunk_rows(args) -> list[dict]:
    """The pretrained student (TRUNK) in the consistent rows of both domains, short and long, and on more fit
    images: what starting from ImageNet features instead of random weights buys, and what data adds to it.
    Also other learning rates, Tux Paint's long row at batch 32 (four times the steps on the same images), and
    the long rows on mixed views (function matching with cached targets)."""
    e, k = args.epochs, args.views
    rows = [{"row": f"consistent K={k}, {TRUNK}", "domain": d, "views": k, "student": TRUNK, "epochs": max(1, e // k)}
            for d in ("fmnist", "tux")]
    rows += [{"row": f"consistent K={k}, long ({args.long}x), {TRUNK}", "domain": d, "views": k, "student": TRUNK,
              "epochs": max(1, e // k) * args.long} for d in ("fmnist", "tux")]
    rows += [{"row": f"consistent K={k}, lr {lr:g}, {TRUNK}", "domain": "fmnist", "views": k, "student": TRUNK,
              "epochs": max(1, e // k), "lr": lr} for lr in TRUNK_LRS]
    rows.append({"row": f"consistent K={k}, long ({args.long}x), batch 32, {TRUNK}", "domain": "tux", "views": k,
                 "student": TRUNK, "epochs": max(1, e // k) * args.long, "batch_size": 32})  # 4x the steps
    rows += [{"row": f"consistent K={k}, long ({args.long}x), {MIX}, {TRUNK}", "domain": d, "views": k, "student": TRUNK,
              "epochs": max(1, e // k) * args.long, "augment": MIX} for d in ("fmnist", "tux")]  # cached mixup
    return rows + [more_images_row(args, TRUNK)] + many_images_rows(args, TRUNK)


def many_images_rows(args, student: str) -> list[dict]:
    """Many more fit images at the long rows' compute: `--many` x the Fashion-MNIST images (K=1), and all of
    `--clipart-all` beside Tux Paint's even half (K=1 and K views). Data against views and epochs, at equal
    student steps."""
    e, k = args.epochs, args.views
    plain_epochs = max(1, e // k) * args.long * k  # the long rows' student steps, in epochs of the plain images
    fmnist = args.many * args.fmnist
    small, large = (sum(len(dataset(s)) for s in fit) for fit in (domains(args)["tux"]["fit"],
                                                                   ("tuxpaint[0::2]", args.clipart_all)))
    return [{"row": f"consistent K=1, {fmnist} fit images, {student}", "domain": "fmnist", "views": 1,
             "student": student, "epochs": max(1, round(plain_epochs / args.many)),
             "fit": (f"fashion-mnist:train[:{fmnist}]",)},
            *({"row": f"consistent K={v}, {args.clipart_all} ({large} fit images), {student}", "domain": "tux",
               "views": v, "student": student, "epochs": max(1, round(plain_epochs * small / large / v)),
               "fit": ("tuxpaint[0::2]", args.clipart_all)} for v in (1, k))]


def bridge_rows(args) -> list[dict]:
    """Bridges into the aligned teacher beyond the main table's, K=1: on many more fit images (`--many` x the
    Fashion-MNIST images; Tux Paint's even half with all of `--clipart-all`), linear and mlp; other source
    encoders on the default fit data; and the test set's class names as the prompt vocabulary (the labels a
    user states). The last encoder is the teacher's own tower, which a linear map turns into the teacher
    exactly: its row checks the fit, not a source, and no target counts it."""
    fmnist = args.many * args.fmnist
    rows = [{"row": f"{args.encoder} {b} bridge, {fmnist} fit images", "domain": "fmnist", "bridge": b,
             "fit": (f"fashion-mnist:train[:{fmnist}]",)} for b in ("linear", "mlp")]
    rows += [{"row": f"{args.encoder} {b} bridge, {args.clipart_all}", "domain": "tux", "bridge": b,
              "fit": ("tuxpaint[0::2]", args.clipart_all)} for b in ("linear", "mlp")]
    rows += [{"row": f"{args.encoder} linear bridge, the class names as prompts", "domain": d, "bridge": "linear",
              "prompts": True} for d in ("fmnist", "tux")]
    for enc in BRIDGE_ENCODERS:
        tower = enc == BRIDGE_ENCODERS[-1]
        rows += [{"row": f"{enc} linear bridge" + (" (the teacher's own tower: a check)" if tower else ""),
                  "domain": d, "bridge": "linear", "encoder": enc, **({"check": True} if tower else {})}
                 for d in ("fmnist", "tux")]
    return rows
