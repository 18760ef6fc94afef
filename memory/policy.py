"""Which state snapshots a session keeps, so thousands of turns do not mean thousands of stored states.

Positions count messages read (a snapshot after message ordinal n sits at position n + 1). Near the end
of the transcript a checkpoint is kept every `every` messages; the spacing doubles with each band of
age, each band holding `per_band` checkpoints, so a session of N messages keeps about
per_band * log2(N / (every * per_band)) + keep_last states. Spacings are `every` times a power of two,
so a snapshot dropped once would be dropped again later: pruning never wants back what it deleted.
Restoring position p replays at most about max(every, age / per_band) messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SnapshotPolicy:
    every: int = 16
    per_band: int = 4
    keep_last: int = 2

    def __post_init__(self) -> None:
        if self.every < 1 or self.per_band < 1 or self.keep_last < 1:
            raise ValueError("every, per_band and keep_last must each be at least 1.")

    def spacing(self, age: int) -> int:
        """Distance between kept checkpoints that are `age` messages behind the newest one."""
        band = (age // (self.every * self.per_band) + 1).bit_length() - 1
        return self.every << band

    def keep(self, positions: Iterable[int]) -> set[int]:
        """The positions to keep out of those stored."""
        ordered = sorted(set(positions), reverse=True)
        if not ordered:
            return set()
        newest = ordered[0]
        kept = set(ordered[: self.keep_last])
        kept.update(p for p in ordered if p % self.spacing(newest - p) == 0)
        return kept
