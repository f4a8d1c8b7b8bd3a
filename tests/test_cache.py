"""Feature cache: round trip, dtypes, order, bad images, mismatches, corruption, interruption."""
from __future__ import annotations

import importlib
import json
import os
import time

import numpy as np
import pytest
import torch

import zeroshift
from zeroshift.cache import CacheError, embed, find_cache, load_features
from zeroshift import distributed as dist
from zeroshift.cache.embed import _default_workers, _Rows, make_loader
from zeroshift.cache.shards import wait_for_shards as _wait_for_shards
from zeroshift.data.base import BadImage
from zeroshift.data.memory import ArraySource
from zeroshift.errors import CacheMismatch, DataError, ZeroshiftError

embed_module = importlib.import_module("zeroshift.cache.embed")  # the package's `embed` is the function
N = 100
CLASSES = ["zero", "one", "two", "three", "four"]
pytestmark = pytest.mark.usefixtures("home", "single_process")


@pytest.fixture(scope="module")
def model():
    return zeroshift.load("tiny-clip:seed=0")


def make_source(cls=ArraySource, seed=0, n=N, spec="test-images", **kw):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)  # [N, 28, 28] grey
    labels = rng.integers(0, len(CLASSES), n)
    captions = [f"picture {i} of a {CLASSES[y]}" for i, y in enumerate(labels)]
    return cls(images, spec, labels=labels, classes=CLASSES, captions=captions, **kw)


def direct(model, source, rows=None) -> np.ndarray:
    rows = range(len(source)) if rows is None else rows
    x = torch.stack([model.image_transform(source.load_image(i)) for i in rows])  # [N, 3, 32, 32]
    return model.encode_image(x).numpy()  # [N, dim]


def temp_files(folder):
    return list(folder.glob(".*.tmp"))


def test_round_trip_order_and_reader(model, tmp_path):
    src = make_source()
    out = tmp_path / "c"
    f = embed(model, src, out, shard_rows=32, batch_size=16, progress=False)
    ref = direct(model, src)
    assert f.dim == model.dim == ref.shape[1] and f.spec == model.spec and len(f) == N
    np.testing.assert_allclose(f.numpy(), ref, atol=1e-6, rtol=0)
    assert f.numpy().dtype == np.float32 and torch.equal(f.torch(), torch.from_numpy(f.numpy()))
    assert np.array_equal(f.index, np.arange(N)) and np.array_equal(f.labels, src.labels)
    assert f.classes == CLASSES and f.captions == src.captions
    assert np.array_equal(np.asarray(f), f.numpy()) and np.asarray(f, dtype=np.float64).dtype == np.float64
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["rows"] == N and m["dtype"] == "float32" and m["shard_rows"] == 32
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:05d}.npy" for i in range(4)]
    assert [s["rows"] for s in m["shards"]] == [32, 32, 32, 4]
    assert m["fingerprint"] == src.fingerprint() and m["zeroshift_version"] == zeroshift.__version__
    assert f.summary["rows"] == N and f.summary["shards_computed"] == 4 and f.summary["images_per_s"] > 0
    assert not temp_files(out)

    g = load_features(out)  # also through the package root
    assert g.summary is None and np.array_equal(g.numpy(), f.numpy())
    assert np.array_equal(zeroshift.load_features(out).labels, src.labels)
    batches = list(g.iter_batches(24))
    assert [len(r) for _, r in batches] == [24, 24, 24, 24, 4]
    assert np.array_equal(torch.cat([b for b, _ in batches]).numpy(), f.numpy())
    shuffled = list(g.iter_batches(24, shuffle=True, seed=1))
    rows = np.concatenate([r for _, r in shuffled])
    assert sorted(rows.tolist()) == list(range(N)) and not np.array_equal(rows, np.arange(N))
    for b, r in shuffled:
        assert b.dtype == torch.float32 and np.array_equal(b.numpy(), f.numpy()[r])


def test_float16_and_workers_keep_order(model, tmp_path):
    src = make_source()
    f32 = embed(model, src, tmp_path / "f32", shard_rows=13, batch_size=5, workers=2, progress=False)
    f16 = embed(model, src, tmp_path / "f16", shard_rows=13, batch_size=5, dtype="float16", progress=False)
    assert f32.summary["workers"] == 2 and f32.manifest["n_shards"] == 8
    np.testing.assert_allclose(f32.numpy(), direct(model, src), atol=1e-6, rtol=0)
    assert np.load(tmp_path / "f16" / "shard-00000.npy").dtype == np.float16
    assert f16.numpy().dtype == np.float32
    assert np.array_equal(f16.numpy(), f32.numpy().astype(np.float16).astype(np.float32))


def test_workers_are_forked_and_bounded_by_a_timeout(model):
    """Forked whatever Python's default start method (spawn and forkserver re-import the caller's main
    module and start far slower), and a worker that sends nothing raises instead of hanging."""
    rows, cpu = _Rows(make_source(), model.image_transform), torch.device("cpu")
    loader = make_loader(rows, [[0, 1], [2, 3]], 2, cpu)
    assert loader.multiprocessing_context.get_start_method() == "fork"
    assert loader.timeout == embed_module.WORKER_TIMEOUT_S > 0
    single = make_loader(rows, [[0, 1]], 0, cpu)
    assert single.multiprocessing_context is None and single.timeout == 0


class HangsInAWorker(ArraySource):
    """Row 17 never comes back from a DataLoader worker (as a fork stuck on an inherited lock); it loads
    in the main process."""

    def load_image(self, i):
        if i == 17 and torch.utils.data.get_worker_info() is not None:
            time.sleep(20)  # killed long before: without the timeout, embed would wait for it, warning of nothing
        return super().load_image(i)


def test_a_hung_worker_leaves_the_unfinished_shards_to_this_process(model, tmp_path, monkeypatch):
    monkeypatch.setattr(embed_module, "WORKER_TIMEOUT_S", 1.0)
    src = make_source(HangsInAWorker)
    with pytest.warns(UserWarning, match=r"a decoding worker sent nothing for 1 s \(hung\)"):
        f = embed(model, src, tmp_path / "c", shard_rows=13, batch_size=5, workers=2, progress=False)
    assert f.manifest["complete"] and f.manifest["n_shards"] == 8 and f.summary["workers"] == 0
    np.testing.assert_allclose(f.numpy(), direct(model, src), atol=1e-6, rtol=0)
    assert np.array_equal(f.index, np.arange(N)) and not temp_files(tmp_path / "c")


class Flaky(ArraySource):
    """Rows in `bad` fail to decode."""

    bad = {3, 40} | set(range(8, 16))  # rows 8..15 fill a whole batch of 8

    def load_image(self, i):
        if i in self.bad:
            raise BadImage(f"row {i} is truncated")
        return super().load_image(i)


def test_bad_images_are_skipped_counted_listed(model, tmp_path):
    src = make_source(Flaky)
    out = tmp_path / "c"
    f = embed(model, src, out, shard_rows=16, batch_size=8, progress=False)
    good = [i for i in range(N) if i not in Flaky.bad]
    assert len(f) == len(good) and np.array_equal(f.index, good)
    assert np.array_equal(f.labels, src.labels[good]) and f.captions == [src.captions[i] for i in good]
    np.testing.assert_allclose(f.numpy(), direct(model, src, good), atol=1e-6, rtol=0)
    assert f.summary["skipped"] == len(Flaky.bad) and f.manifest["n_bad"] == len(Flaky.bad)
    skipped = f.manifest["skipped"]
    assert [s["row"] for s in skipped] == sorted(Flaky.bad)
    assert skipped[0]["key"] == src.keys[3] and "row 3 is truncated" in skipped[0]["reason"]
    assert [s["n_bad"] for s in f.manifest["shards"]][:3] == [9, 0, 1]
    assert not f.shard(0)[3].any() and f.shard(0)[2].any()  # bad rows are zeros in the shard


def test_mismatch_is_refused(model, tmp_path):
    src = make_source()
    out = tmp_path / "c"
    embed(model, src, out, shard_rows=32, progress=False)
    cases = [
        (dict(model=zeroshift.load("tiny-clip:seed=1"), data=src), "model"),
        (dict(model=model, data=make_source(seed=5)), "data fingerprint"),
        (dict(model=model, data=src, dtype="float16"), "dtype"),
        (dict(model=model, data=src, shard_rows=16), "shard_rows"),
    ]
    for kwargs, what in cases:
        with pytest.raises(CacheMismatch, match=what) as err:
            embed(out=out, progress=False, **kwargs)
        assert "--overwrite" in str(err.value) and "\n" not in str(err.value)
    other = make_source(seed=5)
    f = embed(model, other, out, overwrite=True, progress=False)
    assert f.manifest["fingerprint"] == other.fingerprint() and f.manifest["shard_rows"] != 32
    np.testing.assert_allclose(f.numpy(), direct(model, other), atol=1e-6, rtol=0)


def test_corrupted_shard_is_detected_then_repaired(model, tmp_path):
    src = make_source()
    out = tmp_path / "c"
    ref = embed(model, src, out, shard_rows=32, progress=False).numpy()
    shard = out / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-5:] = bytes(b ^ 0xFF for b in data[-5:])
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard-00001.npy.*checksum"):
        load_features(out)
    assert load_features(out, verify=False).dim == ref.shape[1]  # checks can be skipped knowingly
    f = embed(model, src, out, shard_rows=32, progress=False)  # the same embed recomputes that shard only
    assert f.summary["shards_computed"] == 1 and f.summary["shards_reused"] == 3
    assert np.array_equal(load_features(out).numpy(), ref)


class Interrupting(ArraySource):
    stop_at = 50

    def load_image(self, i):
        if i == self.stop_at:
            raise KeyboardInterrupt
        return super().load_image(i)


def test_incomplete_cache_is_refused_and_resumed(model, tmp_path):
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        embed(model, make_source(Interrupting), out, shard_rows=16, batch_size=8, progress=False)
    assert (out / "shard-00002.npy").exists() and not (out / "shard-00003.npy").exists()
    with pytest.raises(CacheError, match="interrupted: rerun the same embed to resume"):
        load_features(out)
    f = embed(model, make_source(), out, progress=False)  # shard_rows comes from the manifest
    assert f.summary["shards_reused"] == 3 and f.summary["shards_computed"] == 4
    ref = embed(model, make_source(), tmp_path / "ref", shard_rows=16, batch_size=8, progress=False)
    assert np.array_equal(f.numpy(), ref.numpy())


def test_default_folder_and_find_cache(model, home):
    src = make_source()
    assert find_cache(model, src) is None
    f = embed(model, src, progress=False)
    assert f.path.parent == home / "features" and f.summary["shards_computed"] == 1
    assert find_cache(model, src) == f.path
    assert find_cache("tiny-clip:seed=0", src) == f.path  # a spec names the same cache
    assert find_cache(model, src, dtype="float16") is None
    assert find_cache(zeroshift.load("tiny-clip:seed=2"), src) is None
    again = embed("tiny-clip:seed=0", src, runtime="torch", progress=False)
    assert again.path == f.path and again.summary["rows"] == 0 and again.summary["shards_computed"] == 0


class Broken:
    """A model-like object (no nn.Module) whose features blow up in batches smaller than 16."""

    def __init__(self, model, value):
        self.inner, self.value = model, value
        self.spec, self.image_transform = model.spec + "/broken", model.image_transform

    def encode_image(self, images):
        feats = self.inner.encode_image(images).clone()  # [B, dim]
        if images.shape[0] < 16:
            feats[2] = self.value
        return feats


@pytest.mark.parametrize("value,dtype,why", [(float("nan"), "float32", "NaN"), (1e6, "float16", "float16 range")])
def test_non_finite_features_are_refused(model, tmp_path, value, dtype, why):
    out = tmp_path / "c"
    src = make_source(n=28)  # shards of 16 and 12 rows; only the second's last batch has < 16 rows
    with pytest.raises(CacheError, match=f"shard-00001.npy.*{why}"):
        embed(Broken(model, value), src, out, shard_rows=16, batch_size=16, dtype=dtype, progress=False)
    assert (out / "shard-00000.npy").exists() and not (out / "shard-00001.npy").exists()


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ZeroshiftError, match="dtype"):
        embed(model, make_source(), tmp_path / "c", dtype="bfloat16")
    with pytest.raises(DataError, match="no rows"):
        embed(model, make_source(n=0), tmp_path / "c")
    with pytest.raises(ZeroshiftError, match="lacks"):
        embed(object(), make_source(), tmp_path / "c")
    with pytest.raises(CacheError, match="manifest.json missing"):
        load_features(tmp_path / "nowhere")


def test_single_process_helpers_and_wait_timeout(model, tmp_path):
    assert (dist.rank(), dist.world_size(), dist.is_distributed()) == (0, 1, False)
    dist.barrier()  # a no-op alone
    out = tmp_path / "c"
    f = embed(model, make_source(), out, shard_rows=40, progress=False)
    sidecar = json.loads((out / "shard-00000.json").read_text())
    (out / "shard-00001.json").unlink()
    with pytest.raises(CacheError, match=r"missing shard-00001.npy \(rank 1\)"):
        _wait_for_shards(out, 3, 2, sidecar["token"], "float32", {0: sidecar}, timeout=0.3)
    assert f.manifest["n_shards"] == 3


class SlowDecode(ArraySource):
    def load_image(self, i):
        time.sleep(0.002)
        return super().load_image(i)


def test_default_workers_follow_decoding_cost(model):
    rows = list(range(2000))
    cheap = _Rows(make_source(n=2000), model.image_transform)
    slow = _Rows(make_source(SlowDecode, n=2000), model.image_transform)
    cpu = torch.device("cpu")
    instant = lambda images: torch.zeros(len(images), 4)  # noqa: E731 - a model that costs nothing
    assert _default_workers(cheap, rows, instant, cpu) == 0  # in-memory thumbnails: decode in this process
    assert _default_workers(slow, rows[:100], instant, cpu) == 0  # small job
    assert _default_workers(slow, rows, instant, cpu) == min(2, len(os.sched_getaffinity(0)))


class SlowModel(torch.nn.Module):
    """Wraps a VLM so that its image tower costs 20 ms an image: decoding is then cheap beside it."""

    def __init__(self, vlm):
        super().__init__()
        self.vlm, self.image_transform = vlm, vlm.image_transform

    def encode_image(self, images):
        time.sleep(0.02 * len(images))
        return self.vlm.encode_image(images)


def test_no_workers_when_the_model_dominates(model):
    slow = _Rows(make_source(SlowDecode, n=2000), model.image_transform)
    assert _default_workers(slow, list(range(2000)), SlowModel(model).encode_image, torch.device("cpu")) == 0


def test_batch_part_of_the_transform_gives_the_same_features(model):
    """ToDtype + Normalize applied to the uint8 batch equal the image-by-image transform."""
    from zeroshift.models.transforms import split_batchable

    per_image, per_batch = split_batchable(model.image_transform)
    assert per_batch is not None
    src = make_source(n=5)
    whole = torch.stack([model.image_transform(src.load_image(i)) for i in range(5)])
    split = per_batch(torch.stack([per_image(src.load_image(i)) for i in range(5)]))
    assert torch.allclose(whole, split, atol=1e-6)
    plain = lambda im: im  # noqa: E731
    assert split_batchable(plain) == (plain, None)
