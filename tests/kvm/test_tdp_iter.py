"""for_each_tdp_pte against its definition (arch/x86/kvm/mmu/tdp_iter.c).

The oracle is a plain recursive pre-order walk written from tdp_iter.c's rules: visit
each entry whose gfn range overlaps [start, end), then, if it is a present non-leaf SPTE,
the table it points to, before the next entry. kvmdbg's iterator also skips zero entries
over ranges wider than one gfn (documented in kvmdbg/mmu/tdp_iter.py); the oracle does
the same there, and visits them over a one-gfn range, as kvm_tdp_mmu_map needs.
The trees are random (fixed seeds), built by hand from spte.py's constructors.
"""

from __future__ import annotations

import random

import pytest

from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu_internal import ROLE_DIRECT, MmuPage
from kvmdbg.mmu.tdp_iter import for_each_tdp_pte


def _table(pages, level, gfn):
    pfn = 0x1000 + len(pages)
    sp = MmuPage(ROLE_DIRECT | level, gfn, pfn, bytearray(4096), True)
    pages[pfn] = sp
    return sp


def _put(sp, i, v):
    sp.spt[i * 8:i * 8 + 8] = v.to_bytes(8, "little")


def random_tree(seed):
    rng = random.Random(seed)
    pages = {}
    root = _table(pages, 4, 0)

    def fill(sp, level):
        span = 9 * (level - 1)
        for i in rng.sample(range(512), rng.randint(1, 6)):
            gfn = sp.gfn + (i << span)
            kind = rng.choice(["table", "table", "leaf", "mmio", "removed"] if level > 1
                              else ["leaf", "leaf", "mmio"])
            if kind == "table":
                child = _table(pages, level - 1, gfn)
                _put(sp, i, S.make_nonleaf_spte(child.pfn))
                fill(child, level - 1)
            elif kind == "leaf":
                _put(sp, i, S.make_spte(0x5000 + gfn, level))
            elif kind == "mmio":
                _put(sp, i, S.make_mmio_spte(gfn, 1))
            else:
                _put(sp, i, S.REMOVED_SPTE)
    fill(root, 4)
    return pages, root


def oracle(pages, sp, start, end, every=False):
    level = sp.level
    span = 9 * (level - 1)
    out = []
    for i in range(512):
        gfn = sp.gfn + (i << span)
        if gfn >= end or gfn + (1 << span) <= start:
            continue
        spte = int.from_bytes(sp.spt[i * 8:i * 8 + 8], "little")
        if not spte and not every:
            continue
        out.append((level, i, gfn, spte))
        if S.is_shadow_present_pte(spte) and not S.is_last_spte(spte, level):
            out += oracle(pages, pages[S.spte_to_pfn(spte)], start, end, every)
    return out


def walk(pages, root, start, end):
    return [(it.level, it.index, it.gfn, it.old_spte)
            for it in for_each_tdp_pte(pages, root, start, end)]


@pytest.mark.parametrize("seed", range(12))
def test_pre_order_over_ranges(seed):
    pages, root = random_tree(seed)
    rng = random.Random(seed + 100)
    gfns = [g for _, _, g, _ in oracle(pages, root, 0, 1 << 40)]
    ranges = [(0, 1 << 40)]
    for _ in range(20):
        a = rng.choice(gfns) + rng.randint(-3, 3) if rng.random() < 0.8 else rng.getrandbits(36)
        b = a + rng.choice([2, 3, 512, 1 << 9, 1 << 18, 1 << 27, rng.getrandbits(30) + 2])
        ranges.append((max(a, 0), b))
    for start, end in ranges:
        assert walk(pages, root, start, end) == oracle(pages, root, start, end), (start, end)


@pytest.mark.parametrize("seed", range(12))
def test_one_gfn_visits_the_whole_path_including_the_hole(seed):
    pages, root = random_tree(seed)
    rng = random.Random(seed + 200)
    gfns = [g for _, _, g, _ in oracle(pages, root, 0, 1 << 40)] + [rng.getrandbits(36) for _ in range(5)]
    for g in gfns:
        got = walk(pages, root, g, g + 1)
        assert got == oracle(pages, root, g, g + 1, every=True)
        assert [lv for lv, *_ in got] == list(range(4, 4 - len(got), -1))   # one entry a level


def test_zapping_the_entry_it_stands_on_is_not_walked_into():
    """tdp_iter_next re-reads the SPTE before try_step_down."""
    pages, root = {}, None
    root = _table(pages, 4, 0)
    child = _table(pages, 3, 0)
    _put(root, 0, S.make_nonleaf_spte(child.pfn))
    _put(child, 5, S.make_spte(0x9000, 3))
    _put(root, 1, S.make_spte(0x8000, 4 - 1))       # something after it
    seen = []
    for it in for_each_tdp_pte(pages, root):
        seen.append((it.level, it.index))
        if it.level == 4 and it.index == 0:
            _put(root, 0, 0)
    assert seen == [(4, 0), (4, 1)]


def test_a_table_installed_where_it_stands_is_walked_into():
    """kvm_tdp_mmu_map installs a table at a hole and steps down into it."""
    pages = {}
    root = _table(pages, 4, 0)
    levels = []
    gfn = 0x12345
    for it in for_each_tdp_pte(pages, root, gfn, gfn + 1):
        levels.append(it.level)
        if it.level > 1 and not it.old_spte:
            child = _table(pages, it.level - 1, it.gfn)
            _put(it.sp, it.index, S.make_nonleaf_spte(child.pfn))
    assert levels == [4, 3, 2, 1]
