"""`dipr serve` caps glibc's malloc arenas, for itself and its worker processes, unless told."""

import os
import subprocess
import sys

from dipr.service.memory import ARENAS, limit_malloc_arenas


def test_the_cap_is_set_for_worker_processes(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == str(ARENAS)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MALLOC_ARENA_MAX'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == str(ARENAS)


def test_an_operators_value_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == "6"
