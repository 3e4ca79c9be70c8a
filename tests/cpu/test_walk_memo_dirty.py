"""GuestWalkMemo's replay of a read after a write's walk set the leaf's dirty flag: the TLB
entry says dirty, as the walk's does (found by hypothesis in test_guest_walk_memo.py)."""

from __future__ import annotations

from kvmdbg.cpu import walker
from kvmdbg.cpu.faults import PFERR_WRITE
from tests.cpu.test_guest_walk_memo import World, _apply


def test_read_replayed_after_a_write_walk_sees_dirty():
    plain, memoised = World(), World()
    memo = walker.GuestWalkMemo()
    for op in [("walk", 0, 0), ("walk", 0, PFERR_WRITE), ("walk", 0, 0)]:
        assert _apply(memoised, op, memo.walk) == _apply(plain, op, walker.walk), op
