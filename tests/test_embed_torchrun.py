"""Under torchrun (gloo, CPU) two ranks fill one cache equal to a single process's, row for row."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from helpers import grey_source, torchrun

import zeroshift
from zeroshift.cache import embed, load_features

N, SHARD_ROWS = 90, 16  # 6 shards: rank 0 computes 0, 2, 4 and rank 1 computes 1, 3, 5

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch.distributed
    import zeroshift
    from zeroshift import distributed as dist
    from zeroshift.data.memory import ArraySource

    rng = np.random.default_rng(0)
    src = ArraySource(rng.integers(0, 256, ({n}, 28, 28), dtype=np.uint8), "torchrun-test",
                      labels=rng.integers(0, 4, {n}), classes=list("abcd"))
    out, reports = sys.argv[1], sys.argv[2]
    first = zeroshift.embed("tiny-clip:seed=0", src, out, shard_rows={shard_rows}, batch_size=8, workers=0,
                            runtime="torch", progress=False)
    second = zeroshift.embed("tiny-clip:seed=0", src, out, runtime="torch", progress=False)
    report = {{"rank": dist.rank(), "world": dist.world_size(), "first": first.summary, "second": second.summary,
              "rows": len(first), "features": first.numpy().tolist()}}
    with open(f"{{reports}}/rank{{dist.rank()}}.json", "w") as f:
        json.dump(report, f)
    torch.distributed.destroy_process_group()
    """
).format(n=N, shard_rows=SHARD_ROWS)


def make_source():
    return grey_source(N, "torchrun-test", 4, classes=list("abcd"))  # the source SCRIPT embeds


@pytest.mark.usefixtures("home", "single_process")
def test_torchrun_two_ranks_match_one_process(tmp_path):
    script, out, reports = tmp_path / "embed_dist.py", tmp_path / "dist", tmp_path / "reports"
    script.write_text(SCRIPT)
    reports.mkdir()
    done = torchrun(script, out, reports, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["rows"] for r in ranks] == [N, N]
    assert [r["first"]["shards_computed"] for r in ranks] == [3, 3]
    assert [r["second"]["shards_computed"] for r in ranks] == [0, 0]  # complete: nothing recomputed
    for i in range(6):
        assert json.loads((out / f"shard-{i:05d}.json").read_text())["rank"] == i % 2
    assert not list(out.glob(".*.tmp"))

    single = embed(zeroshift.load("tiny-clip:seed=0"), make_source(), tmp_path / "single", shard_rows=SHARD_ROWS,
                   batch_size=8, progress=False)
    assert single.summary["world_size"] == 1 and single.summary["shards_computed"] == 6
    dist = load_features(out)
    assert dist.manifest["complete"] and dist.manifest["fingerprint"] == single.manifest["fingerprint"]
    assert np.array_equal(dist.index, single.index) and np.array_equal(dist.labels, single.labels)
    np.testing.assert_allclose(dist.numpy(), single.numpy(), atol=1e-5, rtol=0)
    for r in ranks:  # every rank got the whole cache back
        np.testing.assert_allclose(np.array(r["features"], dtype=np.float32), single.numpy(), atol=1e-5, rtol=0)
