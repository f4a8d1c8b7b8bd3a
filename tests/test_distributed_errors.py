"""torch.distributed set-up errors are one clear line, never a hang: a rendezvous that cannot complete
(a wrong world size), more processes than GPUs, and ranks running different library versions."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from helpers import clean_env, free_port, torchrun


def test_a_world_that_never_fills_times_out_with_a_clear_error():
    env = clean_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               ZEROSHIFT_DIST_TIMEOUT="3")
    code = ("from zeroshift import distributed as dist\n"
            "from zeroshift.errors import ZeroshiftError\n"
            "try:\n    dist.init()\nexcept ZeroshiftError as e:\n    print('ERROR', e)\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - t0 < 60
    line = done.stdout.strip()
    assert line.startswith("ERROR could not join the torch.distributed group (RANK=0, WORLD_SIZE=2") and "torchrun" in line
    assert "\n" not in line


def test_ranks_with_different_versions_are_refused(tmp_path):
    script = tmp_path / "versions.py"
    script.write_text(textwrap.dedent(
        """
        import os, zeroshift.version
        from zeroshift import distributed as dist
        from zeroshift.errors import ZeroshiftError
        if os.environ["RANK"] == "1":
            zeroshift.version.__version__ = "0.0.0+other"
        try:
            dist.init()
        except ZeroshiftError as e:
            print(f"rank {os.environ['RANK']}: {e}", flush=True)
            raise SystemExit(2)
        """))
    done = torchrun(script, timeout=120)
    assert done.returncode != 0
    assert "different library versions" in done.stdout and "0.0.0+other" in done.stdout


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    import pytest
    import torch

    from zeroshift import distributed as dist
    from zeroshift.errors import ZeroshiftError

    for var, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ZeroshiftError, match=r"LOCAL_RANK=1 needs GPU 1, but this machine has 1: .*nproc_per_node=1"):
        dist.init()
