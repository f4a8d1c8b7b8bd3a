"""Fixtures the test modules share: an isolated $ZEROSHIFT_HOME, a single-process environment, a kill at
the n-th training step, a test-only run kind, the linear transfer case. Plain helper functions are in
helpers.py."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import TORCHRUN_VARS, linear_case as make_linear_case


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $ZEROSHIFT_HOME (tmp_path/home) for this test: nothing fetched, caches and exports kept here."""
    path = tmp_path / "home"
    monkeypatch.setenv("ZEROSHIFT_HOME", str(path))
    return path


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One $ZEROSHIFT_HOME for a whole module, so caches made by one test are found by the next."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("home")
    mp.setenv("ZEROSHIFT_HOME", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def linear_case(module_home: Path) -> tuple:
    """helpers.linear_case(): the linear source/teacher pair's features, prompts and weights, cached once
    per module in its $ZEROSHIFT_HOME."""
    return make_linear_case()


@pytest.fixture
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torchrun variables in the environment: this process (and what it launches) is a world of one."""
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def interrupt_at(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Callable]:
    """interrupt_at(cls, n): cls.step raises KeyboardInterrupt (a kill) on its n-th call from now on;
    returns the real method, to put back with monkeypatch.setattr."""

    def patch(cls: type, n: int, name: str = "step") -> Callable:
        real, calls = getattr(cls, name), {"n": 0}

        def killed(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, killed)
        return real

    return patch


@pytest.fixture
def add_run_kind(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable], None]:
    """add_run_kind(name, loader): a test-only kind of run folder, for this test."""
    from zeroshift import runs

    def add(name: str, loader: Callable) -> None:
        monkeypatch.setitem(runs.KINDS, name, loader)

    return add
