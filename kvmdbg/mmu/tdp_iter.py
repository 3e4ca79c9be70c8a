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
page-fault path) it visits the zero entries too, as kvm_tdp_mmu_map needs.
"""

from __future__ import annotations

from kvmdbg.mmu.mmu_internal import role_level
from kvmdbg.mmu.spte import is_last_spte, is_shadow_present_pte, spte_to_pfn

GFN_LIMIT = 1 << 40            # above any gfn a 52-bit guest-physical space has


class TdpIter:
    """Where the walk stands: the table (sp), the entry's index in it, the SPTE as read,
    the first gfn the entry maps and its level (struct tdp_iter's sptep, old_spte, gfn,
    level)."""

    __slots__ = ("sp", "index", "old_spte", "gfn", "level")

    def __init__(self, sp, index: int, old_spte: int, gfn: int, level: int):
        self.sp = sp
        self.index = index
        self.old_spte = old_spte
        self.gfn = gfn
        self.level = level

    def __repr__(self) -> str:
        return (f"TdpIter(level={self.level}, index={self.index}, gfn={self.gfn:#x}, "
                f"old_spte={self.old_spte:#x})")


def nonzero_entries(sp):
    """(index, spte) of every entry of one table that is not zero (present, MMIO and
    removed SPTEs alike), in index order, read as the walk reaches them."""
    for i, v in enumerate(memoryview(sp.spt).cast("Q")):
        if v:
            yield i, v


def read_spte(sp, index: int) -> int:
    return memoryview(sp.spt).cast("Q")[index]


def for_each_tdp_pte(pages, root, start: int = 0, end: int = GFN_LIMIT, min_level: int = 1):
    """Yield a TdpIter for each SPTE under root overlapping [start, end), in pre-order,
    not stepping down below min_level (for_each_tdp_pte_min_level). `pages` maps a
    table's pfn to its MmuPage."""
    one_gfn = end - start == 1
    stack = [_entries(root, start, end, one_gfn)]
    while stack:
        it = next(stack[-1], None)
        if it is None:
            stack.pop()                                          # step up
            continue
        yield it
        level = it.level
        if level <= min_level:
            continue
        spte = read_spte(it.sp, it.index)                        # it may have changed
        if is_shadow_present_pte(spte) and not is_last_spte(spte, level):
            child = pages.get(spte_to_pfn(spte))
            if child is not None:
                stack.append(_entries(child, start, end, one_gfn))   # try_step_down


def _entries(sp, start: int, end: int, every: bool):
    level = role_level(sp.role)
    span = 9 * (level - 1)
    base = sp.gfn
    if every:
        i = (start >> span) & 511
        if base <= start < base + (512 << span):
            yield TdpIter(sp, i, read_spte(sp, i), base + (i << span), level)
        return
    size = 1 << span
    for i, spte in nonzero_entries(sp):
        gfn = base + (i << span)
        if gfn >= end:
            return
        if gfn + size > start:
            yield TdpIter(sp, i, spte, gfn, level)
