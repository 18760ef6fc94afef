"""A handful of the crash-consistency trials (scripts/crash_trials.py; run 100 of each kind by hand): kill -9
at random points of indexing and of a turn's commit, on SQLite and PostgreSQL, then the invariants."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crash_trials.py"


def trials_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("crash_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("kind", ["index", "commit"])
def test_a_few_kill_9_trials_leave_everything_consistent(kind: str, database: str) -> None:
    said: list[str] = []
    tally = trials_module().run_trials(kind, database, trials=3, seed=11, log=said.append)
    assert tally.trials == 3 and tally.problems == [], "\n".join(said)  # three runs killed mid-work
