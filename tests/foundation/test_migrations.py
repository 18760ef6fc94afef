"""The one migration chain must build the models' exact schema on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from app.database import current_revision, downgrade, head_revision, schema_drift, upgrade
from memory.db import Base, make_engine
from tests.pg import temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'rillet.db'}"
    else:
        with temporary_database() as url:
            yield url


def test_upgrade_creates_every_table_without_drift(unmigrated_url: str) -> None:
    upgrade(unmigrated_url)
    engine = make_engine(unmigrated_url)
    assert current_revision(engine) == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    assert schema_drift(engine) == []
    engine.dispose()


def test_upgrade_is_idempotent_and_downgrade_empties(unmigrated_url: str) -> None:
    upgrade(unmigrated_url)
    upgrade(unmigrated_url)
    downgrade(unmigrated_url, "base")
    engine = make_engine(unmigrated_url)
    assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
    engine.dispose()


def test_sqlite_uses_wal_and_enforces_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        with pytest.raises(Exception, match="FOREIGN KEY"):
            conn.execute(text("INSERT INTO messages (session_id, ordinal, role, text, created_at) "
                              "VALUES (12345, 0, 'user', 'orphan', CURRENT_TIMESTAMP)"))
    engine.dispose()


def test_alembic_command_line_check_finds_no_drift(tmp_path: Path) -> None:
    """`alembic check` (the tool a developer runs) agrees with the in-code drift check."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'check.db'}"
    upgrade(url)
    root = Path(__file__).resolve().parents[2]
    env = {"RILLET_DATABASE_URL": url, "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([str(Path(sys.executable).parent / "alembic"), "-c", str(root / "alembic.ini"), "check"],
                            cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr
