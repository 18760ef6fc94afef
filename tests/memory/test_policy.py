"""Snapshot thinning: bounded count, bounded replay distance, and never wanting back what it pruned."""

from __future__ import annotations

import math

import pytest

from memory.policy import SnapshotPolicy


def simulate(policy: SnapshotPolicy, turns: int) -> set[int]:
    """What the store does: after each turn (2 messages) add a snapshot, then prune."""
    kept: set[int] = set()
    for turn in range(1, turns + 1):
        kept = policy.keep(kept | {2 * turn})
    return kept


@pytest.mark.parametrize("policy", [SnapshotPolicy(), SnapshotPolicy(every=2, per_band=1, keep_last=1),
                                    SnapshotPolicy(every=6, per_band=3, keep_last=4)])
def test_pruning_step_by_step_equals_pruning_once(policy: SnapshotPolicy) -> None:
    """Monotone: pruning after every turn keeps exactly what one pruning of the full history keeps."""
    turns = 3000
    kept = simulate(policy, turns)
    assert kept == policy.keep(range(2, 2 * turns + 1, 2))
    assert 2 * turns in kept


POLICIES = [SnapshotPolicy(), SnapshotPolicy(every=2, per_band=1, keep_last=1),
            SnapshotPolicy(every=6, per_band=3, keep_last=4)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("turns", [1, 5, 63, 500, 5000])
def test_count_grows_logarithmically_and_replay_distance_is_bounded(policy: SnapshotPolicy, turns: int) -> None:
    """Both bounds from what the policy promises, not from its own `spacing`: about
    per_band * log2(N / (every * per_band)) + keep_last states, and a restore `age` messages back replays
    at most twice every + age / per_band messages (a spacing of every * 2^band is at most that)."""
    kept = sorted(simulate(policy, turns))
    newest = 2 * turns
    bands = math.log2(max(1.0, newest / (policy.every * policy.per_band))) + 1
    assert len(kept) <= policy.per_band * (bands + 1) + policy.keep_last
    for position in range(1, newest + 1):
        below = [p for p in kept if p <= position]
        start = below[-1] if below else 0
        assert position - start <= 2 * (policy.every + (newest - position) / policy.per_band), (position, start)


def test_thousands_of_turns_do_not_keep_thousands_of_states() -> None:
    assert len(simulate(SnapshotPolicy(), 4000)) < 40


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SnapshotPolicy(every=0)
