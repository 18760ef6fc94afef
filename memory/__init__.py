"""Memory: the SQL database, sessions, transcripts and recurrent-state snapshots.

The transcript of every session is the source of truth; snapshots of the model's recurrent state after
a turn are a cache that makes reopening a long session instant. This package owns the SQLAlchemy base,
the engine factory and the session service that writes a turn and its snapshot in one transaction.
"""
