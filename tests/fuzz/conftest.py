"""Hypothesis profiles of the property tests: `bounded` in `make test` (all of them well under two minutes,
on SQLite and PostgreSQL), `fuzz` for the longer run of scripts/fuzz.py (RILLET_FUZZ_PROFILE=fuzz)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The fixtures (a database, a model) are made once per test and shared by its examples on purpose.
COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                       HealthCheck.data_too_large]}
settings.register_profile("bounded", max_examples=20, derandomize=True, print_blob=True, **COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("RILLET_FUZZ_EXAMPLES", "1000")), print_blob=True,
                          **COMMON)
settings.load_profile(os.environ.get("RILLET_FUZZ_PROFILE", "bounded"))

from tests.app.conftest import embedder, make_engine, tiny, tokenizer  # noqa: E402, F401 (the engine's fixtures)
