"""collection generation; chunk ids never reused on SQLite

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 00:50:00

Replicas (and the CLI beside a server) compare their FAISS and BM25 caches with the catalog when a
collection's generation moves; the comparison is by chunk id, so an id must never name two chunks.
PostgreSQL's sequences never reuse one; SQLite does, unless the table is AUTOINCREMENT, so the chunks
table is rebuilt that way there (nothing references chunks, so the copy is safe with foreign keys on).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('collections') as batch:
        batch.add_column(sa.Column('generation', sa.BigInteger(), server_default='0', nullable=False))
    if op.get_bind().dialect.name == 'sqlite':
        with op.batch_alter_table('chunks', recreate='always', table_kwargs={'sqlite_autoincrement': True}):
            pass


def downgrade() -> None:
    with op.batch_alter_table('collections') as batch:
        batch.drop_column('generation')
