"""The sizes a session's parts may have: one definition for the live chat and for imported files.

A message typed in the chat is refused past `MAX_MESSAGE_CHARS` (app/engine.py also counts its tokens);
an answer cannot be longer than the longest the model may write (4,096 tokens of at most 81 characters
each in SmolLM2's vocabulary, plus the stop note); titles and collection names fit their 200-character
columns. An imported file is held to the same, and to a count of messages that a live session reaches
only after months of daily use (each of them is re-read by the model when the session is first opened).
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 32_000
MAX_ANSWER_CHARS = 340_000
TITLE_MAX = 200
COLLECTION_NAME_MAX = 200
MAX_IMPORT_MESSAGES = 20_000
MAX_IMPORT_BYTES = 64 << 20
MAX_CITATIONS = 20  # top-k is at most 20 in the live chat
MAX_CITATION_CHARS = 32_000  # one source's JSON: its path, lines and passage
