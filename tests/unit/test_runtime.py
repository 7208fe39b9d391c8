"""Process-wide tuning: the malloc arena limit reaches the processes an entry point starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infra.runtime import MALLOC_ARENAS, limit_malloc_arenas

_CHILD = "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"


def _child_sees() -> str:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True)
    return out.stdout.strip()


def test_the_arena_limit_is_passed_on_to_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == str(MALLOC_ARENAS)
    assert _child_sees() == str(MALLOC_ARENAS)


def test_an_operators_arena_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    limit_malloc_arenas()
    assert _child_sees() == "4"


def test_a_malformed_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "many")
    limit_malloc_arenas()  # no error: glibc ignores it too
    assert os.environ["MALLOC_ARENA_MAX"] == "many"
