"""Walking a TDP root's SPTEs in pre-order (mirrors arch/x86/kvm/mmu/tdp_iter.c).

KVM's for_each_tdp_pte visits every SPTE whose range overlaps [start, end), top down:
try_step_down into the table a present non-leaf SPTE points to, else try_step_side to
the next entry of the same table, else step up and side. The SPTE is read again before
stepping down (tdp_iter_next re-reads iter->old_spte), so a caller that zaps or replaces
the entry it stands on is not walked into the table it just removed, and one that just
installed a table is walked into it.

One simplification, for speed: over a range wider than one entry the walk visits only the
entries that are not zero (a zero SPTE has nothing below it and KVM's callers skip it),
so zapping a root costs its live entries, not 512 per table. Over a one-gfn range (the
page-fault path) it visits the zero entries too, as kvm_tdp_mmu_map needs (tdp_mmu.py
writes that walk out for speed; tests/kvm/test_tdp_map_walk.py pins the two together).
"""

from __future__ import annotations

from itertools import compress

from kvmdbg.bits import UNPACK_FROM
from kvmdbg.mmu.mmu_internal import ROLE_LEVEL_MASK
from kvmdbg.mmu.spte import PFN_MASK, PT_PAGE_SIZE, SPTE_MMU_PRESENT

_U64 = UNPACK_FROM[8]
_INDICES = range(512)

GFN_LIMIT = 1 << 40            # above any gfn a 52-bit guest-physical space has


class TdpIter:
    """Where the walk stands (struct tdp_iter): the table (sp), the entry's index in it,
    the SPTE as read (old_spte), the first gfn the entry maps and its level. As in the
    kernel, the walk moves one iterator: read its fields before the next step."""

    __slots__ = ("sp", "index", "old_spte", "gfn", "level")

    def __repr__(self) -> str:
        return (f"TdpIter(level={self.level}, index={self.index}, gfn={self.gfn:#x}, "
                f"old_spte={self.old_spte:#x})")


_NONZERO_BYTE = bytes([0] + [1] * 255)     # bytes.translate table: 1 for a non-zero byte
_SPARSE = 48                               # entries past which a full scan is quicker
_ZERO_ENTRY = bytes(8)
_FEW = 8                                   # entries count_entries reads one by one


def scan_table(spt) -> tuple:
    """(the indices of a table's non-zero entries in order, as an iterable to go through
    once, and its entries by index). A zap scans every table, and tables are mostly
    empty: the bytes are mapped to 0/1 and searched at C speed, one find per entry, the
    entries read through a memoryview. A table that looks dense (its first and last
    entries in use), or turns out so, is read whole into a list and listed in one pass
    over its 512 entries instead. Either way the answer is the same; only the time is not."""
    if not (spt[:8] == _ZERO_ENTRY or spt[-8:] == _ZERO_ENTRY):
        values = memoryview(spt).cast("Q").tolist()
        return compress(_INDICES, values), values
    find = spt.translate(_NONZERO_BYTE).find
    out = []
    pos = find(1)
    while pos >= 0:
        i = pos >> 3
        out.append(i)
        if len(out) > _SPARSE:
            values = memoryview(spt).cast("Q").tolist()
            return compress(_INDICES, values), values
        pos = find(1, (i + 1) << 3)
    return out, memoryview(spt).cast("Q")


def scan_page(sp) -> tuple:
    """scan_table for an MMU page: its touched entries read one by one when they are few
    (what a zap meets: tables hold a handful of entries), else the scan. The same answer,
    but for the entries by index: here the non-zero ones as they were read, in a dict."""
    touched = sp.touched
    if touched < 0 or touched.bit_count() > _SPARSE:
        return scan_table(sp.spt)
    spt = sp.spt
    out = []
    values = {}
    while touched:
        low = touched & -touched
        i = low.bit_length() - 1
        v = _U64(spt, i << 3)[0]
        if v:
            out.append(i)
            values[i] = v
        touched ^= low
    return out, values


# The byte of an SPTE that holds SPTE_MMU_PRESENT, and a bytes.translate table that maps
# that byte to 1 when the bit is set (count_entries counts present SPTEs at C speed).
_PRESENT_BYTE = (SPTE_MMU_PRESENT.bit_length() - 1) >> 3
_PRESENT_IN_BYTE = bytes(int(b & (SPTE_MMU_PRESENT >> (8 * _PRESENT_BYTE)) != 0) for b in range(256))


def count_entries(sp, removed: int) -> tuple:
    """(entries neither zero nor `removed`, those of them present) of an MMU page: what a
    zap of a 4 KiB table counts, with nobody tracing its entries. A few touched entries
    are read one by one; more, as the span from the first to the last touched one (the
    others are zero), at C speed."""
    touched = sp.touched
    if touched < 0:
        lo, hi = 0, 512
    elif touched.bit_count() <= _FEW:
        spt = sp.spt
        live = present = 0
        while touched:
            low = touched & -touched
            v = _U64(spt, (low.bit_length() - 1) << 3)[0]
            touched ^= low
            if v & SPTE_MMU_PRESENT:
                present += 1
            elif not v or v == removed:
                continue
            live += 1
        return live, present
    else:
        lo, hi = (touched & -touched).bit_length() - 1, touched.bit_length()
    span = sp.spt[lo << 3:hi << 3]
    values = memoryview(span).cast("Q").tolist()
    live = len(values) - values.count(0) - values.count(removed)
    return live, span[_PRESENT_BYTE::8].translate(_PRESENT_IN_BYTE).count(1)


def nonzero_indices(spt) -> list:
    """The indices of a table's non-zero entries, in order (scan_table)."""
    return list(scan_table(spt)[0])


def nonzero_entries(sp):
    """(index, spte) of every entry of one table that is not zero (present, MMIO and
    removed SPTEs alike), in index order. The table is scanned for non-zero entries once
    (scan_page); each entry is read again as the walk reaches it, so one a caller
    zeroed meanwhile is skipped. (No caller creates entries in a table it is walking.)"""
    spt = sp.spt
    for i in scan_page(sp)[0]:
        v = _U64(spt, i << 3)[0]
        if v:
            yield i, v


def read_spte(sp, index: int) -> int:
    return _U64(sp.spt, index << 3)[0]


def _steps_down(spte: int, level: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT) and level > 1 and not spte & PT_PAGE_SIZE


def for_each_tdp_pte(pages, root, start: int = 0, end: int = GFN_LIMIT, min_level: int = 1):
    """Yield the iterator at each SPTE under root overlapping [start, end), in pre-order,
    not stepping down below min_level (for_each_tdp_pte_min_level). `pages` maps a
    table's pfn to its MmuPage."""
    it = TdpIter()
    if end - start == 1:
        # One gfn (the page-fault path): one entry a level, zero entries included.
        sp = root
        while True:
            level = sp.role & ROLE_LEVEL_MASK
            span = 9 * (level - 1)
            i = (start >> span) & 511
            it.sp, it.index, it.gfn, it.level = sp, i, sp.gfn + (i << span), level
            it.old_spte = _U64(sp.spt, i << 3)[0]
            yield it
            if level <= min_level:
                return
            spte = _U64(sp.spt, i << 3)[0]                   # it may have changed
            if not _steps_down(spte, level):
                return
            sp = pages.get((spte & PFN_MASK) >> 12)          # try_step_down
            if sp is None:
                return
    stack = [(root, nonzero_entries(root))]
    while stack:
        sp, entries = stack[-1]
        level = sp.role & ROLE_LEVEL_MASK
        span = 9 * (level - 1)
        for i, spte in entries:                              # try_step_side
            gfn = sp.gfn + (i << span)
            if gfn >= end:
                break
            if gfn + (1 << span) <= start:
                continue
            it.sp, it.index, it.old_spte, it.gfn, it.level = sp, i, spte, gfn, level
            yield it
            if level > min_level:
                spte = _U64(sp.spt, i << 3)[0]               # it may have changed
                if _steps_down(spte, level):
                    child = pages.get((spte & PFN_MASK) >> 12)
                    if child is not None:                    # try_step_down
                        stack.append((child, nonzero_entries(child)))
                        break
        else:
            stack.pop()                                      # step up
            continue
        if stack[-1][0] is sp:                               # ran past end: step up
            stack.pop()
