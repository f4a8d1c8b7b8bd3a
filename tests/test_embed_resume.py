"""An embed killed with SIGKILL mid-run resumes to exactly the result of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import grey_source

import zeroshift
from zeroshift.cache import CacheError, embed, load_features

N, SHARD_ROWS, BATCH = 64, 16, 8

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import zeroshift
    from zeroshift.data.memory import ArraySource

    class Slow(ArraySource):
        def load_image(self, i):
            if i >= {shard_rows}:  # the first shard is quick, the rest crawl
                time.sleep(0.1)
            return super().load_image(i)

    rng = np.random.default_rng(0)
    src = Slow(rng.integers(0, 256, ({n}, 28, 28), dtype=np.uint8), "resume-test", labels=rng.integers(0, 3, {n}))
    zeroshift.embed(zeroshift.load("tiny-clip:seed=0"), src, sys.argv[1], shard_rows={shard_rows},
                    batch_size={batch}, workers=0, progress=False)
    """
).format(n=N, shard_rows=SHARD_ROWS, batch=BATCH)


def make_source():
    return grey_source(N, "resume-test", 3)  # the source SCRIPT embeds, without its slowness


@pytest.mark.usefixtures("home", "single_process")
def test_killed_embed_resumes_exactly(tmp_path):
    out = tmp_path / "cache"
    script = tmp_path / "slow_embed.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not (out / "shard-00000.json").exists():  # the first shard is on disk, with its checksum
            assert proc.poll() is None, "the embed subprocess ended before it was killed"
            assert time.monotonic() < deadline, "no shard appeared within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / f"shard-{N // SHARD_ROWS - 1:05d}.json").exists()
    with pytest.raises(CacheError, match="interrupted"):
        load_features(out)
    kept = (out / "shard-00000.npy").stat()
    (out / ".shard-00001.npy.99999.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves

    model = zeroshift.load("tiny-clip:seed=0")
    resumed = embed(model, make_source(), out, batch_size=BATCH, progress=False)
    again = (out / "shard-00000.npy").stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # kept, not recomputed
    assert resumed.summary["shards_reused"] >= 1
    assert resumed.summary["shards_reused"] + resumed.summary["shards_computed"] == N // SHARD_ROWS
    assert resumed.summary["rows"] == N - SHARD_ROWS * resumed.summary["shards_reused"]
    assert not list(out.glob(".*.tmp"))

    whole = embed(model, make_source(), tmp_path / "whole", shard_rows=SHARD_ROWS, batch_size=BATCH, progress=False)
    assert len(resumed) == len(whole) == N
    assert np.array_equal(resumed.index, np.arange(N))
    assert np.array_equal(resumed.numpy(), whole.numpy())  # row for row, bit for bit
    assert np.array_equal(resumed.labels, whole.labels)
    assert sorted(p.name for p in out.glob("shard-*.npy")) == [f"shard-{i:05d}.npy" for i in range(N // SHARD_ROWS)]
    assert np.array_equal(load_features(out).numpy(), whole.numpy())
