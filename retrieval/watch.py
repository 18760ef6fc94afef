"""Keep a collection's index current: re-index whenever files under its folders change.

`watchfiles` (inotify and friends) batches the events of a burst (a checkout, a save-all), so one
incremental run covers them; that run stats the tree and re-reads only what changed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchfiles import DefaultFilter, watch

from retrieval.indexer import IndexReport
from retrieval.service import Retrieval

log = logging.getLogger(__name__)


class _Filter(DefaultFilter):
    """watchfiles' defaults (VCS folders, caches, editor swap files) plus paths that are ours: the
    database and index files may live under an indexed folder, and writing them must not re-trigger."""

    def __init__(self, own_paths: Sequence[Path]) -> None:
        super().__init__()
        self.own = [str(Path(p).resolve()) for p in own_paths]

    def __call__(self, change, path: str) -> bool:  # type: ignore[no-untyped-def]
        return super().__call__(change, path) and not any(path.startswith(own) for own in self.own)


def watch_collection(retrieval: Retrieval, name: str, on_report: Callable[[IndexReport], None], *,
                     own_paths: Sequence[Path] = (), stop: threading.Event | None = None,
                     debounce_ms: int = 1600) -> None:
    """Index once, then again after every burst of changes, until `stop` is set (or Ctrl-C).

    The watcher starts before the first run, so a change made while that run works is not missed.
    """
    roots = retrieval.get_collection(name).roots
    started = False
    for changes in watch(*roots, watch_filter=_Filter([retrieval.index_dir, *own_paths]), stop_event=stop,
                         debounce=debounce_ms, raise_interrupt=False, yield_on_timeout=True, rust_timeout=500):
        if started and not changes:
            continue
        if changes:
            log.info("%d changes under %s; re-indexing", len(changes), ", ".join(roots))
        started = True
        on_report(retrieval.index(name))
