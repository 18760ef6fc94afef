"""Run as a separate process: begin appending a turn, then hang just before COMMIT until killed.

Arguments: database URL, session id, expected version, path of the state (safetensors), path to touch
when the transaction is open and written, vocabulary size of the tiny model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from safetensors.torch import load_file
from sqlalchemy import event
from sqlalchemy.orm import Session

from backbone.kv_cache import KVCache
from memory.db import make_engine
from memory.sessions import SessionStore
from tests.memory.tiny import tiny_config


def main() -> None:
    url, session_id, version, state_path, ready_path, vocab = sys.argv[1:7]
    metadata = json.loads(Path(state_path).with_suffix(".json").read_text())
    state = KVCache.from_tensors(load_file(state_path), metadata, tiny_config(int(vocab)), metadata["fingerprint"])

    @event.listens_for(Session, "before_commit")
    def hang(_session: Session) -> None:  # every row of the turn is written, the transaction still open
        Path(ready_path).write_text("written")
        time.sleep(600)

    store = SessionStore(make_engine(url))
    store.append_turn(int(session_id), "the turn that never lands", "never stored", state,
                      model_fingerprint=metadata["fingerprint"], expected_version=int(version))


if __name__ == "__main__":
    main()
