"""The SQL catalog of indexed collections: what was crawled, what failed and why, and every chunk.

The catalog is the source of truth; the FAISS and BM25 files beside it are caches that can always be
rebuilt from it (chunk texts here, their vectors in `embeddings`), which is what makes a crash harmless.
A chunk's primary key is also its vector id in FAISS, and is never used twice (a sequence on PostgreSQL,
AUTOINCREMENT on SQLite), so two caches holding the same ids hold the same chunks.

A collection's `generation` counts the changes to its chunks: every transaction that adds or removes
chunks bumps it first (`bump_generation`), so a process (another replica, the CLI beside the server)
that last matched its caches to an older generation knows, from one column, that it must catch up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

import memory.users  # noqa: F401  (the users who own collections)
from memory.db import Base, utcnow


class Collection(Base):
    """A named set of folders (`roots`) with an index of its own; no roots: documents added by API."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    roots: Mapped[list[str]] = mapped_column(JSON)
    ignore: Mapped[list[str]] = mapped_column(JSON, default=list)
    embedding_model: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column()
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    files: Mapped[list[File]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )


class CollectionOwner(Base):
    """Who made a collection, on a server with accounts: every user may search it, only its owner may delete
    it. A collection made before there were users has no row."""

    __tablename__ = "collection_owners"

    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class File(Base):
    """One crawled file (or one API document, whose id is the path). `status`: indexed, skipped, failed."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("collection_id", "root", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    root: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="files")
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="file", cascade="all, delete-orphan", passive_deletes=True
    )


class Chunk(Base):
    """A passage with its 1-based line span (and page or notebook cell); `id` is its FAISS vector id."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("file_id", "ordinal"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    start_line: Mapped[int] = mapped_column(Integer)
    end_line: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    header: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64), index=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    file: Mapped[File] = relationship(back_populates="chunks")


class Embedding(Base):
    """Vectors by (model, hash of the embedded text): unchanged chunks are never embedded twice."""

    __tablename__ = "embeddings"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    text_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def bump_generation(session: Session, collection_id: int) -> int:
    """The collection's next generation, as the first statement of a transaction that changes its chunks.
    On PostgreSQL it also takes the collection row's lock, so writers of one collection commit in the
    order of their generations."""
    return int(session.scalar(update(Collection).where(Collection.id == collection_id)
                              .values(generation=Collection.generation + 1).returning(Collection.generation)))
