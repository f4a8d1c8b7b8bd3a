"""Every registered scheme, read from the registry: its target imports (or its missing backend is named),
its example parses back to it, and its kind is one the library knows."""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys

import pytest

from zeroshift import specs
from zeroshift.errors import MissingBackend

KINDS = {"vlm", "image", "text", "data"}
TABLES = {"model": specs.MODEL_SCHEMES, "data": specs.DATA_SCHEMES}
SCHEMES = [pytest.param(table, scheme, id=f"{table}:{name}")
           for table, schemes in TABLES.items() for name, scheme in schemes.items()]


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None
        return False


def assert_names_a_pip_package(error: pytest.ExceptionInfo, scheme: specs.Scheme) -> None:
    message = str(error.value)
    assert "\n" not in message and f"'{scheme.name}:'" in message
    assert re.search(r"pip install \S+", message), message
    assert f"pip install {scheme.install}" in message  # the package, which may be named unlike the module


@pytest.mark.parametrize("table, scheme", SCHEMES)
def test_scheme_target_example_and_kind(table, scheme):
    schemes = TABLES[table]
    assert scheme.kind in KINDS and (scheme.kind == "data") == (table == "data")
    parsed, _ = specs.parse(scheme.example, schemes)
    assert parsed is scheme, f"example {scheme.example!r} parses to {parsed.name!r}"
    module, sep, function = scheme.target.partition(":")
    assert sep and module and function and ":" not in function, scheme.target
    if scheme.requires:
        assert scheme.install, "a scheme with requirements names what to pip install"
    if all(importable(m) for m in scheme.requires):
        specs.check_backend(scheme)
        assert callable(getattr(importlib.import_module(module), function, None)), scheme.target
    else:
        with pytest.raises(MissingBackend) as e:
            specs.check_backend(scheme)
        assert_names_a_pip_package(e, scheme)


@pytest.mark.parametrize("table, scheme", [p for p in SCHEMES if p.values[1].requires])
def test_a_missing_backend_names_its_pip_package(table, scheme, monkeypatch):
    for module in scheme.requires:
        monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(MissingBackend) as e:
        specs.check_backend(scheme)
    assert_names_a_pip_package(e, scheme)
