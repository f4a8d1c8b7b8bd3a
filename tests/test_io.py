"""zeroshift.io: temporary files left by killed writers are cleaned, a live writer's are kept when asked."""
import os

from zeroshift.io import clean_temp, temp_path, write_json


def test_clean_temp_removes_leftovers_and_spares_fresh_ones_when_aged(tmp_path):
    write_json(tmp_path / "done.json", {"a": 1})
    stale, fresh = temp_path(tmp_path / "a.png"), temp_path(tmp_path / "b.png")
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(stale, (1, 1))  # modified long ago: a killed writer's
    assert clean_temp(tmp_path, older_than=600) == [stale]
    assert fresh.is_file() and not stale.exists() and (tmp_path / "done.json").is_file()
    assert clean_temp(tmp_path) == [fresh]  # no age bound: every temporary file goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json"]
    assert clean_temp(tmp_path / "absent") == []
