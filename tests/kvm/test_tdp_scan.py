"""The C-speed scans of the TDP MMU's hot paths against their plain definitions.

nonzero_indices (tdp_iter.py) finds a table's non-zero entries by searching bytes; the
definition is every index whose 8-byte entry is not zero. handle_changed_spte
(tdp_mmu.py) writes spte.py's predicates out as bit tests; its bookkeeping must be what
the predicates say.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmdbg.mmu import spte as S
from kvmdbg.mmu.tdp_iter import _SPARSE, nonzero_indices, scan_table

# Entries whose only non-zero byte is any one of the eight, and full values.
_one_byte = st.tuples(st.integers(1, 255), st.integers(0, 7)).map(lambda bk: bk[0] << (8 * bk[1]))
_value = st.one_of(_one_byte, st.integers(1, (1 << 64) - 1))


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.integers(0, 511), _value, max_size=_SPARSE + 20)
       | st.dictionaries(st.integers(0, 511), _value, min_size=100, max_size=512))
def test_nonzero_indices_is_every_nonzero_entry(entries):
    spt = bytearray(4096)
    for i, v in entries.items():
        spt[i * 8:i * 8 + 8] = v.to_bytes(8, "little")
    want = [i for i in range(512) if any(spt[i * 8:i * 8 + 8])]
    assert nonzero_indices(spt) == want
    indices, values = scan_table(spt)
    assert list(indices) == want
    assert [values[i] for i in range(512)] == [int.from_bytes(spt[i * 8:i * 8 + 8], "little")
                                               for i in range(512)]


def test_scan_table_each_way():
    """Sparse, sparse with both ends in use (read as dense), and dense past _SPARSE."""
    for used in ([3], [0, 511], [0, 5, 511], list(range(0, 512, 7)), list(range(1, 100))):
        spt = bytearray(4096)
        for i in used:
            spt[i * 8 + 5] = 1
        indices, values = scan_table(spt)
        assert list(indices) == used and all(values[i] == 1 << 40 for i in used)


_spte = st.one_of(st.just(0), st.just(S.REMOVED_SPTE),
                  st.builds(S.make_mmio_spte, st.integers(0, 1 << 20), st.integers(0, 100)),
                  st.builds(S.make_nonleaf_spte, st.integers(1, 1 << 20)),
                  st.builds(lambda pfn, level, w: S.make_spte(pfn, level, writable=w),
                            st.integers(1, 1 << 20), st.integers(1, 3), st.booleans()))


def _expected(old, new, level):
    """handle_changed_spte's stat changes, from spte.py's predicates."""
    was_present, is_present = S.is_shadow_present_pte(old), S.is_shadow_present_pte(new)
    was_leaf = was_present and S.is_last_spte(old, level)
    is_leaf = is_present and S.is_last_spte(new, level)
    out = {}
    if was_leaf != is_leaf:
        out[("pages_4k", "pages_2m", "pages_1g")[level - 1]] = 1 if is_leaf else -1
    if was_present and not is_present:
        out["kvmdbg_sptes_zapped"] = 1
    elif is_present and not was_present:
        out["kvmdbg_sptes_created"] = 1
    removes_table = was_present and not was_leaf and (not is_present or is_leaf)
    bug = ((was_leaf and is_leaf and S.spte_to_pfn(old) != S.spte_to_pfn(new))
           or (not was_present and not is_present
               and not (S.is_mmio_spte(old) or S.is_mmio_spte(new) or new == S.REMOVED_SPTE)))
    return out, removes_table, bug


@settings(max_examples=300, deadline=None, database=None)
@given(_spte, _spte, st.integers(1, 3))
def test_handle_changed_spte_follows_the_predicates(old, new, level):
    from kvmdbg.kvm.profiles import get_profile
    from kvmdbg.kvm.vm import Vm
    from kvmdbg.mmu.mmu_internal import KvmBug
    vm = Vm(1 << 20, 1, profile=get_profile("v5.15"))
    tdp = vm.tdp_mmu
    sp = tdp.pool.alloc_page(level, 0, True)
    removed = []
    tdp.handle_removed_pt = removed.append
    before = dict(vm.stats)
    want, removes_table, bug = _expected(old, new, level) if old != new else ({}, False, False)
    try:
        tdp.handle_changed_spte(sp, 0, old, new, level)
    except KvmBug:
        assert bug
        return
    assert not bug
    got = {k: v - before.get(k, 0) for k, v in vm.stats.items() if v != before.get(k, 0)}
    assert got == want
    # A removed table is handed on only if one is behind the old SPTE (none here).
    assert removed == [] and (not removes_table or tdp.pages.get(S.spte_to_pfn(old)) is None)


# scan_page reads only the entries an MMU page's writers marked (MmuPage.touched): against
# the definition (every non-zero entry), on pages the real fault, zap and debugger-write
# paths made, under the TDP MMU, the legacy MMU and shadow paging.
_gfn = st.integers(0x100, 0x100 + 3000)
_mmu_op = st.one_of(st.tuples(st.just("fault"), _gfn),
                    st.tuples(st.just("zap"), _gfn, st.integers(1, 600)),
                    st.tuples(st.just("poke"), st.integers(0, 50), st.integers(0, 511),
                              st.sampled_from([0, 1, 0x1234 << 12 | 7])))


def _scans_agree(vm):
    from kvmdbg.mmu.tdp_iter import count_entries, scan_page
    for sp in vm.mmu_pages.pages.values():
        indices, values = scan_page(sp)
        indices = list(indices)
        assert indices == nonzero_indices(sp.spt), f"page {sp.pfn:#x}"
        entries = [int.from_bytes(sp.spt[i * 8:i * 8 + 8], "little") for i in range(512)]
        assert [values[i] for i in indices] == [entries[i] for i in indices]
        # count_entries (a zap's count of a 4 KiB table) against its definition.
        live = [e for e in entries if e and e != S.REMOVED_SPTE]
        assert count_entries(sp, S.REMOVED_SPTE) == (
            len(live), len([e for e in live if e & S.SPTE_MMU_PRESENT]))


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(_mmu_op, max_size=40))
def test_scan_page_finds_every_nonzero_entry_the_mmu_and_debugger_wrote(ops):
    from kvmdbg.debug.engine.memory import write_hpa
    from kvmdbg.kvm.boot import Program, boot
    from kvmdbg.kvm.profiles import get_profile
    from kvmdbg.kvm.vm import Vm
    from kvmdbg.mmu import mmu as M
    vm = Vm(16 << 20, 1, profile=get_profile("v5.15"))
    boot(vm, Program(b"\xf4"))
    v = vm.current = vm.vcpus[0]
    v.enter_guest()
    poked = False
    for op in ops:
        if op[0] == "fault" and not poked:
            M.kvm_mmu_page_fault(v, op[1] << 12, 2)
        elif op[0] == "zap" and not poked:
            vm.tdp_mmu.zap_leafs(op[1], op[1] + op[2])
        elif op[0] == "poke":
            pages = sorted(vm.mmu_pages.pages)
            write_hpa(vm, pages[op[1] % len(pages)] << 12 | op[2] << 3, op[3].to_bytes(8, "little"))
            poked = True            # KVM's own paths are not run over a debugger's garbage
        _scans_agree(vm)
    if not poked:
        vm.tdp_mmu.zap_root(v.mmu.root.sp, payer=v)
        assert vm.mmu_pages.live_sptes == 0


@pytest.mark.parametrize("kvm", ["v5.15", "v6.12", "legacy-mmu", "shadow"])
@pytest.mark.parametrize("name", ["smep_flip", "pt_edit", "memslot_overlay", "cr0_wp_flip"])
def test_scan_page_agrees_on_the_pages_programs_leave(name, kvm):
    from tests.helpers import run_program
    vm = run_program(name, kvm, arg=40, max_steps=60_000)
    assert vm.mmu_pages.pages
    _scans_agree(vm)
