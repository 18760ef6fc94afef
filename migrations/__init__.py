"""Alembic migrations for Rillet's one SQLAlchemy metadata (SQLite and PostgreSQL alike)."""
