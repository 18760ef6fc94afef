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


def test_a_database_of_the_first_schema_upgrades_with_its_sessions_intact(unmigrated_url: str) -> None:
    """0003 adds answer alternatives: messages stored before it become the only answer at their place."""
    from memory.sessions import SessionStore

    upgrade(unmigrated_url, "0001")
    engine = make_engine(unmigrated_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sessions (id, title, token_count, version, created_at, updated_at) "
                          "VALUES (1, 'old chat', 0, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO messages (session_id, ordinal, role, text, created_at) VALUES "
                          "(1, 0, 'user', 'hello', CURRENT_TIMESTAMP), (1, 1, 'assistant', 'hi', CURRENT_TIMESTAMP)"))
    engine.dispose()
    upgrade(unmigrated_url)
    engine = make_engine(unmigrated_url)
    assert current_revision(engine) == head_revision() and schema_drift(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT variant FROM messages ORDER BY ordinal")).scalars().all() == [0, 0]
    store = SessionStore(engine)
    assert [m.text for m in store.messages(1)] == ["hello", "hi"] and store.variants(1) == {}
    engine.dispose()
    downgrade(unmigrated_url, "0001")  # and back: the first schema, its rows kept
    engine = make_engine(unmigrated_url)
    assert "message_alternatives" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == 2


def test_upgrade_from_the_first_schema_keeps_the_catalog_and_never_reuses_chunk_ids(unmigrated_url: str) -> None:
    """A database made before collection generations upgrades with its rows intact; afterwards a deleted
    chunk's id is never given to a new chunk (replicas compare their indexes with the catalog by id)."""
    upgrade(unmigrated_url, "0001")
    engine = make_engine(unmigrated_url)
    chunk = ("INSERT INTO chunks (file_id, ordinal, start_line, end_line, text, text_hash) "
             "VALUES (1, :ordinal, 1, 1, 'text', 'hash')")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO collections (id, name, roots, ignore, embedding_model, created_at) "
                          "VALUES (1, 'old', '[]', '[]', 'model', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO files (id, collection_id, root, path, size, mtime, status, updated_at) "
                          "VALUES (1, 1, 0, 'a.py', 1, 1.0, 'indexed', CURRENT_TIMESTAMP)"))
        for ordinal in range(2):
            conn.execute(text(chunk), {"ordinal": ordinal})
    engine.dispose()
    upgrade(unmigrated_url)
    engine = make_engine(unmigrated_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT name, generation FROM collections")).all() == [("old", 0)]
        ids = [i for (i,) in conn.execute(text("SELECT id FROM chunks ORDER BY id"))]
        assert len(ids) == 2
        conn.execute(text("DELETE FROM chunks WHERE id = :id"), {"id": ids[-1]})
        conn.execute(text(chunk), {"ordinal": 5})
        assert conn.execute(text("SELECT max(id) FROM chunks")).scalar() > ids[-1]
    assert schema_drift(engine) == []
    engine.dispose()
