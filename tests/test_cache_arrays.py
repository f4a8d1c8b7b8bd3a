"""write_features (precomputed rows into a cache) and the bounded-residency reader."""
from pathlib import Path

import numpy as np
import pytest

from zeroshift.cache import Features, load_features, write_features
from zeroshift.cache import store
from zeroshift.errors import CacheError


def chunks(x: np.ndarray, sizes):
    start = 0
    for n in sizes:
        yield x[start:start + n]
        start += n


def test_round_trip_in_uneven_chunks(tmp_path):
    x = np.random.default_rng(0).normal(size=(103, 8)).astype(np.float32)
    labels = np.arange(103) % 3
    f = write_features(tmp_path / "c", chunks(x, [7, 50, 1, 45]), rows=103, dim=8, model="m", data="d",
                       dtype="float32", shard_rows=16, labels=labels, classes=["a", "b", "c"])
    g = load_features(tmp_path / "c")  # checksums verified
    assert len(g) == 103 and g.manifest["n_shards"] == 7 and g.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(g.numpy(), x)
    np.testing.assert_array_equal(g.labels, labels)
    np.testing.assert_array_equal(f.gather(np.array([102, 0, 17])), x[[102, 0, 17]])


def test_wrong_row_count_or_width_leaves_no_cache(tmp_path):
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(CacheError, match="held 10 rows, not the 12"):
        write_features(tmp_path / "a", [x], rows=12, dim=4, model="m", data="d")
    with pytest.raises(CacheError, match="more than the 8 rows"):
        write_features(tmp_path / "b", [x], rows=8, dim=4, model="m", data="d", shard_rows=4)
    with pytest.raises(CacheError, match="4-d rows"):
        write_features(tmp_path / "c", [np.zeros((3, 5))], rows=3, dim=4, model="m", data="d")
    with pytest.raises(CacheError, match="beyond float16"):
        write_features(tmp_path / "e", [np.full((2, 4), 1e6)], rows=2, dim=4, model="m", data="d")
    for name in "abce":
        with pytest.raises(CacheError, match="manifest.json missing"):
            load_features(tmp_path / name)
    write_features(tmp_path / "d", [x], rows=10, dim=4, model="m", data="d")
    with pytest.raises(CacheError, match="already holds"):
        write_features(tmp_path / "d", [x], rows=10, dim=4, model="m", data="d")
    assert len(write_features(tmp_path / "d", [x[:5]], rows=5, dim=4, model="m", data="d", overwrite=True)) == 5


def _mapped_kb(f: Features) -> int:
    """Resident kilobytes of this process inside the cache's shard files (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            inside = len(head) >= 6 and head[5].startswith(str(f.path))
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc")
def test_reads_keep_no_cache_pages_and_few_files_open(tmp_path, monkeypatch):
    n, dim = 20000, 256  # 10 MB of float16 in 5 shards
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, dim)).astype(np.float16)
    f = write_features(tmp_path / "c", chunks(x, [5000] * 4), rows=n, dim=dim, model="m", data="d", shard_rows=4096)
    monkeypatch.setattr(store, "MAX_OPEN", 2)
    for _ in range(10):
        rows = rng.integers(0, n, 1000)  # with repeats
        np.testing.assert_array_equal(f.gather(rows), x[rows].astype(np.float32))
        assert len(f._open) <= 2
    np.testing.assert_array_equal(f.numpy(), x.astype(np.float32))
    assert _mapped_kb(f) == 0  # read with pread into the batch: nothing of the cache stays resident
    f.close()
    assert not f._open


def test_a_truncated_shard_is_one_clear_error(tmp_path):
    write_features(tmp_path / "c", [np.ones((10, 4), np.float32)], rows=10, dim=4, model="m", data="d", shard_rows=8)
    f = load_features(tmp_path / "c", verify=False)
    shard = tmp_path / "c" / store.shard_name(0)
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(CacheError, match="ends early"):
        f.gather(np.array([7]))


def test_a_shard_that_cannot_be_read_is_one_clear_error(tmp_path):
    x = np.ones((10, 4), np.float32)
    write_features(tmp_path / "c", [x], rows=10, dim=4, model="m", data="d", shard_rows=4)
    f = load_features(tmp_path / "c", verify=False)
    (tmp_path / "c" / store.shard_name(1)).unlink()  # e.g. a machine whose copy of the cache is partial
    assert f.gather(np.array([0, 1])).sum() == 8
    with pytest.raises(CacheError, match=r"rank 0 cannot read .*shard-00001.npy .*whole cache"):
        f.gather(np.array([5]))


def test_gather_of_no_rows_and_of_every_row_in_any_order(tmp_path):
    x = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    f = write_features(tmp_path / "c", [x], rows=50, dim=3, model="m", data="d", dtype="float32", shard_rows=7)
    assert f.gather(np.array([], dtype=np.int64)).shape == (0, 3)
    rows = np.random.default_rng(3).permutation(np.concatenate([np.arange(50), np.arange(50)]))
    np.testing.assert_array_equal(f.gather(rows), x[rows])
