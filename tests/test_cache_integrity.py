"""Every file of a feature cache is checked when it is read (issue 17, items 3 and 4): a damaged one is
recomputed by the embed that made it, or refused in one line naming the file, never read as something else."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_pixels, one_line, tiny_vlm

import zeroshift
from zeroshift.cache import CacheError, embed, find_cache, load_features, write_features
from zeroshift.data.memory import ArraySource
from zeroshift.errors import CacheMismatch

N, SHARD_ROWS = 40, 16  # shards of 16, 16 and 8 rows
CLASSES = ["zero", "one", "two"]
pytestmark = pytest.mark.usefixtures("home", "single_process")


@pytest.fixture(scope="module")
def model():
    return zeroshift.load("tiny-clip:seed=0")


def make_source() -> ArraySource:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), N)
    captions = [f"picture {i} of a {CLASSES[y]}" for i, y in enumerate(labels)]
    return ArraySource(rng.integers(0, 256, (N, 28, 28), dtype=np.uint8), "test-integrity", labels=labels,
                       classes=CLASSES, captions=captions)


def run_embed(model, out: Path):
    return embed(model, make_source(), out, shard_rows=SHARD_ROWS, batch_size=8, progress=False)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def cache(model, tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A sound cache and the bytes of each of its files."""
    out = tmp_path / "c"
    run_embed(model, out)
    return out, files(out)


# ---------------------------------------------------------------- ways to damage a cache
def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    replaced = change(obj)  # a change edits obj in place, or returns what replaces it
    path.write_text(json.dumps(obj if replaced is None else replaced))


def edit_manifest(change):
    return lambda out: edit_json(out / "manifest.json", change)


def save_labels(path: Path, labels: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, labels)
    path.write_bytes(buf.getvalue())


def relabel(out: Path) -> None:
    save_labels(out / "labels.npy", (np.load(out / "labels.npy") + 1) % len(CLASSES))


def reverse_captions(out: Path) -> None:
    edit_json(out / "meta.json", lambda m: m.update(captions=m["captions"][::-1]))


def forged(name: str, damage):
    """`damage`, then the manifest's checksum of `name` made to match: only the content checks can tell."""
    def apply(out: Path) -> None:
        damage(out)
        sha = hashlib.sha256((out / name).read_bytes()).hexdigest()
        edit_json(out / "manifest.json", lambda m: m["files"].update({name: sha}))
    return apply


def drop_sha(m: dict) -> None:
    del m["shards"][0]["sha256"]


def bad_rows_outside(m: dict) -> None:
    m["shards"][2].update(bad_rows=[8], n_bad=1)  # shard 2 holds 8 rows: 0..7


DAMAGE = {  # name: (damage, what load_features says)
    "labels relabelled": (relabel, r"labels\.npy in .* fails its sha256 checksum"),
    "labels truncated": (lambda out: (out / "labels.npy").write_bytes((out / "labels.npy").read_bytes()[:-8]),
                         r"labels\.npy in .* fails its sha256 checksum"),
    "labels deleted": (lambda out: (out / "labels.npy").unlink(), r"labels\.npy in .* is missing"),
    "labels of the wrong length": (
        forged("labels.npy", lambda out: save_labels(out / "labels.npy", np.zeros(N - 1, int))),
        r"labels\.npy in .* does not hold 40 whole-number labels"),
    "captions reversed": (reverse_captions, r"meta\.json in .* fails its sha256 checksum"),
    "captions shorter": (lambda out: edit_json(out / "meta.json", lambda m: m.update(captions=m["captions"][:-1])),
                         r"meta\.json in .* fails its sha256 checksum"),
    "captions shorter, checksum forged": (
        forged("meta.json", lambda out: edit_json(out / "meta.json", lambda m: m.update(captions=m["captions"][:-1]))),
        r"meta\.json in .* holds 39 captions for 40 rows"),
    "meta invalid": (lambda out: (out / "meta.json").write_text("{not json"), r"meta\.json in .* fails its sha256"),
    "meta deleted": (lambda out: (out / "meta.json").unlink(), r"meta\.json in .* is missing"),
    "zero-byte shard": (lambda out: (out / "shard-00001.npy").write_bytes(b""),
                        r"shard-00001\.npy in .* is unreadable \(empty or not a \.npy file\)"),
    "start outside": (
        edit_manifest(lambda m: m["shards"][1].update(start=1000)),
        r"manifest\.json in .* is damaged \(shard 1 holds start 1000 and 16 rows, not start 16 and 16 rows\)"),
    "bad_rows outside": (edit_manifest(bad_rows_outside),
                         r"manifest\.json in .* is damaged \(shard 2's bad_rows \[8\] point outside its 8 rows\)"),
    "entry without sha256": (edit_manifest(drop_sha), r"manifest\.json in .* is damaged \(shard 0 has no sha256\)"),
    "no file checksums": (edit_manifest(lambda m: m.update(files={})),
                          r"manifest\.json in .* is damaged \(files has no sha256 for meta\.json\)"),
    "manifest a list": (edit_manifest(lambda m: [m]), r"manifest\.json in .* holds a JSON list, not an object"),
    "manifest not JSON": (lambda out: (out / "manifest.json").write_text('{"format": 2,'),
                          r"manifest\.json in .* is not valid JSON"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_is_refused_in_one_line_then_recomputed(model, cache, case):
    out, sound = cache
    damage, message = DAMAGE[case]
    damage(out)
    with pytest.raises(CacheError, match=message) as err:
        load_features(out)
    text = one_line(err)
    assert "rerun the embed that made it" in text  # and how: the command when the manifest still says
    unreadable = case.startswith("manifest ")  # then it cannot say which embed
    command = "zeroshift embed --model tiny-clip:seed=0,dim=32,size=32 --data test-integrity --shard-rows 16 --out"
    assert (command in text) != unreadable

    f = run_embed(model, out)  # the embed path has the source: it recomputes what is damaged
    assert files(out) == sound, "the recomputed cache differs from the undamaged one"
    assert f.summary["shards_computed"] == (1 if case == "zero-byte shard" else 0)
    g = load_features(out)
    assert np.array_equal(g.labels, make_source().labels) and g.captions == make_source().captions


def test_unchecked_reads_still_check_labels_and_meta(cache):
    out, _ = cache
    relabel(out)
    with pytest.raises(CacheError, match=r"labels\.npy in .* fails its sha256"):
        load_features(out, verify=False)  # only the hashing of the shards is skipped


def test_an_empty_shard_read_unchecked_is_one_line(model, cache):
    out, _ = cache
    (out / "shard-00001.npy").write_bytes(b"")
    f = load_features(out, verify=False)
    assert f.gather(np.array([0])).shape == (1, model.dim)  # shard 0 is sound
    with pytest.raises(CacheError, match=r"shard-00001\.npy is not a \.npy file \(empty or damaged\): rerun") as err:
        f.gather(np.array([20]))
    one_line(err)


def strip_checks(out: Path) -> None:
    """Make `out` look written before labels and meta had checksums (format 1, sidecars without `check`)."""
    def old(m: dict) -> None:
        m["format"] = 1
        del m["files"]

    edit_manifest(old)(out)
    for sidecar in out.glob("shard-*.json"):
        edit_json(sidecar, lambda s: s.pop("check") and None)


def test_a_cache_from_before_the_checksums_is_refused_or_recomputed_whole(model, cache):
    out, sound = cache
    strip_checks(out)
    with pytest.raises(CacheError, match=r"has format 1 \(from an older zeroshift\), this zeroshift reads 2: "
                                         r"rerun the embed that made it \(zeroshift embed") as err:
        load_features(out)
    one_line(err)
    assert find_cache(model, make_source(), out=out) is None
    f = run_embed(model, out)
    assert f.summary["shards_computed"] == 3 and f.summary["shards_reused"] == 0
    assert files(out) == sound


def test_a_cache_from_a_newer_zeroshift_is_left_alone(model, cache):
    out, sound = cache
    edit_manifest(lambda m: m.update(format=3))(out)
    with pytest.raises(CacheError, match=r"has format 3 \(from a newer zeroshift\)"):
        load_features(out)
    with pytest.raises(CacheMismatch, match="newer than this zeroshift's 2: upgrade zeroshift") as err:
        run_embed(model, out)
    one_line(err)
    assert files(out).keys() == sound.keys() and files(out)["shard-00000.npy"] == sound["shard-00000.npy"]


def test_a_damaged_sidecar_is_recomputed_on_resume_not_trusted(model, cache):
    out, sound = cache
    edit_manifest(lambda m: m.update(complete=False))(out)  # as an interrupted run leaves it
    edit_json(out / "shard-00001.json", lambda s: s.update(bad_rows=[0], n_bad=1))  # its shard is intact
    (out / "shard-00002.json").write_text("[]")
    f = run_embed(model, out)
    assert f.summary["shards_computed"] == 2 and f.summary["shards_reused"] == 1
    assert len(f) == N and files(out) == sound


def colour_source() -> ArraySource:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=48)
    captions = [f"a {['red', 'green', 'blue'][y]} square, number {i}" for i, y in enumerate(labels)]
    return ArraySource(colour_pixels(48, 32, 30, rng), "test:colours", labels=labels, classes=["red", "green", "blue"],
                       captions=captions)


def test_eval_never_reports_metrics_of_damaged_labels_or_captions(home):
    from zeroshift.zeroshot.evaluate import evaluate

    vlm = tiny_vlm()
    first = evaluate(vlm, colour_source(), out=None, runtime="torch", progress=False)
    assert list(first) == ["zeroshot_classification", "zeroshot_retrieval"]
    (folder,) = (home / "features").iterdir()
    sound = files(folder)
    relabel(folder)
    reverse_captions(folder)
    again = evaluate(vlm, colour_source(), out=None, runtime="torch", progress=False)
    for task in first:
        assert again[task]["metrics"] == first[task]["metrics"], task
    assert files(folder) == sound


def test_write_features_caches_are_checked_too(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(CacheError, match=r"labels of shape \(9,\) do not give one label to each of the 10 rows"):
        write_features(tmp_path / "c", [x], rows=10, dim=4, model="m", data="d", labels=np.zeros(9, int))
    write_features(tmp_path / "c", [x], rows=10, dim=4, model="m", data="d", labels=np.arange(10) % 2,
                   classes=["a", "b"])
    assert np.array_equal(load_features(tmp_path / "c").labels, np.arange(10) % 2)
    save_labels(tmp_path / "c" / "labels.npy", np.zeros(10, int))
    with pytest.raises(CacheError, match=r"labels\.npy in .* fails its sha256 checksum .*: write it again with "
                                         r"write_features\(\.\.\., overwrite=True\)") as err:
        load_features(tmp_path / "c", verify=False)
    one_line(err)
