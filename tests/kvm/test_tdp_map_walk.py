"""TdpMmu.map's walk (written out for speed, and its last_tables memo) against the same
walk through for_each_tdp_pte.

The reference below is kvm_tdp_mmu_map as kvmdbg wrote it before the walk was written
out: tdp_mmu_for_each_pte over [gfn, gfn + 1), a table built where one is missing, a
huge leaf split. Two identical VMs take the same random faults (4 KiB, 2 MiB and 1 GiB
goals, MMIO, frozen entries, zaps); every outcome, table, stat and cycle must match.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmdbg.kvm.boot import Program, boot
from kvmdbg.kvm.profiles import get_profile
from kvmdbg.kvm.vm import Vm
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu_internal import PageFault, RetPF
from kvmdbg.mmu.tdp_iter import for_each_tdp_pte


def reference_map(tdp, vcpu, root, fault, alloc_child):
    kvm = tdp.kvm
    gfn = fault.gfn
    if kvm.bus.active:
        kvm.trace("kvm_mmu_spte_requested", vcpu.index, gfn=gfn, pfn=fault.pfn,
                  level=fault.goal_level)
    for it in for_each_tdp_pte(tdp.pages, root, gfn, gfn + 1):
        spte, level = it.old_spte, it.level
        if spte == S.REMOVED_SPTE:
            return RetPF.RETRY
        if level == fault.goal_level:
            return tdp._map_target_level(vcpu, it.sp, it.index, spte, level, fault)
        if S.is_shadow_present_pte(spte) and not S.is_large_pte(spte):
            continue
        child = alloc_child(it.sp, it.gfn, level - 1)
        child.parent = it.sp
        child.parent_index = it.index
        if S.is_shadow_present_pte(spte):
            tdp._split_huge(child, spte, level - 1)
        tdp.tdp_mmu_set_spte(it.sp, it.index, S.make_nonleaf_spte(child.pfn), it.gfn)
        kvm.charge(vcpu, "sp_alloc")
    raise AssertionError("the walk ended above the goal level")


def _vm():
    vm = Vm(64 << 20, 1, profile=get_profile("v5.15"))
    boot(vm, Program(b"\xf4"))
    v = vm.vcpus[0]
    vm.current = v
    v.enter_guest()
    vm.bus.set_keep(10**5)
    return vm, v


def _state(vm):
    return (sorted((pfn, bytes(sp.spt)) for pfn, sp in vm.mmu_pages.pages.items()),
            sorted(vm.stats.items()), vm.vcpus[0].cpu.extra_cycles,
            [(e.name, sorted(e.fields.items())) for e in vm.bus.log])


def _fault(vm, v, gfn, goal, mmio, use_reference):
    fault = PageFault(gfn << 12, 2)
    slot = None if mmio else vm.memslots.lookup(gfn)
    fault.slot = slot
    if slot is not None:
        fault.goal_level = fault.req_level = goal
        base = gfn & ~((1 << (9 * (goal - 1))) - 1)
        fault.pfn = vm.host.hva_to_pfn(slot.gfn_to_hva(base))
    tdp = vm.tdp_mmu
    ops = v.mmu.ops
    root = v.mmu.root.sp
    if use_reference:
        return reference_map(tdp, v, root, fault, ops._alloc_child)
    return tdp.map(v, root, fault, ops._alloc_child)


def _freeze(vm, v, gfn, level):
    """Put REMOVED_SPTE in the entry for gfn at `level`, if the walk reaches it."""
    for it in for_each_tdp_pte(vm.tdp_mmu.pages, v.mmu.root.sp, gfn, gfn + 1):
        if it.level == level and it.old_spte == 0:
            it.sp.spt[it.index * 8:it.index * 8 + 8] = S.REMOVED_SPTE.to_bytes(8, "little")
            return


_gfn = st.sampled_from([0x10, 0x11, 0x200, 0x3FF, 0x1234, 0x2000, 0x2001, 0x3E00])
_op = st.one_of(
    st.tuples(st.just("fault"), _gfn, st.sampled_from([1, 1, 1, 2, 3]), st.booleans()),
    st.tuples(st.just("freeze"), _gfn, st.integers(1, 3), st.just(False)),
    st.tuples(st.just("zap"), _gfn, st.just(0), st.just(False)),
    st.tuples(st.just("reload"), st.just(0), st.just(0), st.just(False)),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_op, min_size=1, max_size=25))
def test_map_walks_as_for_each_tdp_pte(ops):
    a, b = _vm(), _vm()
    for kind, gfn, arg, mmio in ops:
        outcomes = []
        for (vm, v), ref in ((a, False), (b, True)):
            if kind == "fault":
                if arg == 3 and gfn >= 0x2000:
                    arg = 2                      # 64 MiB of RAM: no 1 GiB slot
                try:
                    outcomes.append(_fault(vm, v, gfn, arg, mmio and arg == 1, ref))
                except Exception as e:          # a KVM bug check must be the same one
                    outcomes.append(repr(e))
            elif kind == "freeze":
                _freeze(vm, v, gfn, arg)
            elif kind == "zap":
                vm.tdp_mmu.zap_leafs(gfn & ~511, (gfn & ~511) + 512)
            else:                                # the root goes (zapped on its last put)
                from kvmdbg.mmu import mmu as M
                M.kvm_mmu_reset_context(v)
                M.kvm_mmu_reload(v)
        assert outcomes[:1] == outcomes[1:]
        assert _state(a[0]) == _state(b[0])


def test_a_removed_table_is_not_remembered():
    """A 4 KiB fault, a 2 MiB one over the same table (the table goes), a 4 KiB one again:
    the last must split the huge leaf, not use the table the memo saw (so the test above
    can fail)."""
    ops = [("fault", 0x10, 1, False), ("fault", 0x11, 2, False), ("fault", 0x12, 1, False),
           ("reload", 0, 0, False), ("fault", 0x13, 1, False)]
    test_map_walks_as_for_each_tdp_pte.hypothesis.inner_test(ops)
