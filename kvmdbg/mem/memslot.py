"""Memslots: gfn ranges mapped to hva ranges (mirrors struct kvm_memory_slot).

The generation counter moves on every change, as kvm_memslots::generation does,
so cached translations (MMIO SPTEs, the interpreter's fast paths) can notice.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from kvmdbg.bits import PAGE_SHIFT
from kvmdbg.generation import Generation


@dataclass(slots=True)
class Memslot:
    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    as_id: int = 0

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    def gfn_to_hva(self, gfn: int) -> int:
        return self.userspace_addr + ((gfn - self.base_gfn) << PAGE_SHIFT)


class Memslots:
    def __init__(self, changes: Generation | None = None) -> None:
        self._slots: list[Memslot] = []     # sorted by base_gfn, non-overlapping
        self._starts: list[int] = []
        self.generation = 0
        self.changes = changes if changes is not None else Generation()   # shared, see Vm
        # The slot the last lookup found (every EPT violation looks one up, nearly always
        # the same RAM slot): owned here, forgotten by create and delete, the only writers
        # of the slot list (slots themselves never change in place).
        self._last: Memslot | None = None

    def __iter__(self):
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def lookup(self, gfn: int) -> Memslot | None:
        last = self._last
        if last is not None and last.base_gfn <= gfn < last.base_gfn + last.npages:
            return last
        return self._lookup(gfn)

    def _lookup(self, gfn: int) -> Memslot | None:
        """lookup by bisection (no memo)."""
        i = bisect.bisect_right(self._starts, gfn) - 1
        if i >= 0:
            slot = self._slots[i]
            if gfn < slot.base_gfn + slot.npages:
                self._last = slot
                return slot
        return None

    def by_id(self, slot_id: int) -> Memslot | None:
        for s in self._slots:
            if s.id == slot_id:
                return s
        return None

    def create(self, slot: Memslot) -> None:
        if slot.npages <= 0:
            raise ValueError("memslot must have at least one page")
        for s in self._slots:
            if s.id == slot.id:
                raise ValueError(f"memslot {slot.id} already exists")
            if slot.base_gfn < s.end_gfn and s.base_gfn < slot.end_gfn:
                raise ValueError(f"memslot {slot.id} overlaps memslot {s.id}")
        i = bisect.bisect_right(self._starts, slot.base_gfn)
        self._slots.insert(i, slot)
        self._starts.insert(i, slot.base_gfn)
        self._last = None
        self.generation += 1
        self.changes.value += 1

    def delete(self, slot_id: int) -> Memslot:
        for i, s in enumerate(self._slots):
            if s.id == slot_id:
                del self._slots[i]
                del self._starts[i]
                self._last = None
                self.generation += 1
                self.changes.value += 1
                return s
        raise ValueError(f"no memslot {slot_id}")

    def next_id(self) -> int:
        return max((s.id for s in self._slots), default=-1) + 1
