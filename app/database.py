"""Database set-up for the application: run Alembic migrations in code and hand out sessions."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.pool import StaticPool

import memory.models
import memory.users  # noqa: F401
import retrieval.catalog  # noqa: F401
from memory.db import Base, make_engine

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# Replicas starting together on one PostgreSQL database each upgrade it at start: one transaction-scoped
# advisory lock (any constant key) makes them take turns, and the later ones find the schema up to date.
MIGRATION_LOCK = 0x52494C4C  # "RILL"


def _migrate(url: str, revision: str, direction: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            getattr(command, direction)(cfg, revision)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (creating the SQLite file if needed)."""
    _migrate(url, revision, "upgrade")


def downgrade(url: str, revision: str) -> None:
    """Take the database at `url` back to `revision` (`base` drops every table)."""
    _migrate(url, revision, "downgrade")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema_drift(engine: Engine) -> list[object]:
    """Differences between the migrated database and the models (empty when they agree)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


IN_MEMORY = ("sqlite://", "sqlite:///:memory:")


def open_database(url: str) -> Engine:
    """Upgrade to the newest schema, then return an engine: what the app does at start-up.

    An in-memory SQLite database (`sqlite://`, for a throwaway chat) is one connection shared by every
    thread and migrated on that connection, since each new connection would be a new, empty database."""
    if url not in IN_MEMORY:
        upgrade(url)
        return make_engine(url)
    engine = make_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    with engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return engine
