"""Files zeroshift writes honour the umask, so a team can read each other's runs and caches (issue 16, item 12)."""
from __future__ import annotations

import os
import stat

import pytest
from helpers import colour_folder

from zeroshift.cli.main import main


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_runs_caches_and_results_are_readable_by_others(home, tmp_path, umask_022):
    data = colour_folder(tmp_path / "imgs", 4, 20)
    run, results = tmp_path / "run", tmp_path / "results"
    assert main(["transfer", "--teacher", "tiny-clip:seed=0", "--encoder", "tiny-clip:seed=1", "--data",
                 f"folder:{data}", "--method", "lstsq", "--out", str(run)]) == 0
    assert main(["eval", "--model", f"run:{run}", "--dataset", f"folder:{data}", "--out", str(results),
                 "--runtime", "torch"]) == 0
    written = [p for root in (run, results, home) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written)  # the run's weights and the text cache
    unreadable = [str(p) for p in written if not os.stat(p).st_mode & stat.S_IROTH]
    assert unreadable == []
