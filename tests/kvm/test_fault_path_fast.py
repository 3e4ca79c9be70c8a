"""The EPT-violation path's shortcuts against the general code they stand for.

- make_spte's precomputed bits (the TDP fault path's defaults) against the general builder;
- handle_changed_spte's written-out case (an empty entry made present) against the general
  bookkeeping as it was before (the reference below): the same stats, live SPTE count,
  events and tables over random sequences of SPTE changes;
- Memslots.lookup's memory of the last slot found against bisection, across creates and
  deletes;
- Vcpu.load_mmu_pgd reloading the root already loaded (no fast-path flush): the CPU
  translates as one whose fast paths were flushed;
- TdpMmu.fast_leaf_fault (a 4 KiB fault into a table the root has, written out) against
  the general direct_page_fault -> kvm_tdp_mmu_map, on programs and the access test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmdbg.kvm.boot import Program, boot
from kvmdbg.kvm.profiles import get_profile
from kvmdbg.kvm.vm import Vm
from kvmdbg.mem.memslot import Memslot, Memslots
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu_internal import kvm_bug, role_smm
from kvmdbg.mmu.tdp_mmu import _PAGES_STAT


@given(st.integers(0, (1 << 40) - 1), st.integers(1, 3), st.booleans(), st.booleans(),
       st.booleans(), st.sampled_from([0, 1, 4, 5, 6, 7]))
def test_make_spte_matches_the_general_builder(pfn, level, writable, host_writable, accessed, mt):
    assert (S.make_spte(pfn, level, writable, host_writable, accessed, mt)
            == S._make_spte(pfn, level, writable, host_writable, accessed, mt))
    assert S.make_spte(pfn, level, writable) == S._make_spte(pfn, level, writable, True, True,
                                                            S.EPT_MT_WB)


def reference_handle_changed_spte(self, sp, gfn, old, new, level):
    """handle_changed_spte as written before its empty-to-present case was written out."""
    if old == new:
        return
    kvm = self.kvm
    was_present = bool(old & S.SPTE_MMU_PRESENT)
    is_present = bool(new & S.SPTE_MMU_PRESENT)
    was_leaf = was_present and (level == 1 or bool(old & S.PT_PAGE_SIZE))
    is_leaf = is_present and (level == 1 or bool(new & S.PT_PAGE_SIZE))
    if was_leaf and is_leaf and (old ^ new) & S.PFN_MASK:
        kvm_bug("present leaf replaced")
    if not was_present and not is_present:
        if not (S.is_mmio_spte(old) or S.is_mmio_spte(new) or new == S.REMOVED_SPTE):
            kvm_bug("non-present SPTE changed")
    if kvm.bus.active and sp.tdp_mmu_page:
        kvm.trace("kvm_tdp_mmu_spte_changed", kvm.current_vcpu_index(), gfn=gfn,
                  old_spte=old, new_spte=new, level=level, as_id=role_smm(sp.role))
    self.pool.live_sptes += ((1 if new and new != S.REMOVED_SPTE else 0)
                             - (1 if old and old != S.REMOVED_SPTE else 0))
    stats = kvm.stats
    if was_leaf != is_leaf:
        stats[_PAGES_STAT[level]] += 1 if is_leaf else -1
    if was_present and not is_present:
        stats["kvmdbg_sptes_zapped"] += 1
    elif is_present and not was_present:
        stats["kvmdbg_sptes_created"] += 1
    if was_present and not was_leaf and (not is_present or is_leaf):
        child = self.pages.get((old & S.PFN_MASK) >> 12)
        if child is not None:
            self.handle_removed_pt(child)


def _vm(traced: bool):
    vm = Vm(64 << 20, 1, profile=get_profile("v5.15"))
    boot(vm, Program(b"\xf4"))
    v = vm.vcpus[0]
    vm.current = v
    v.enter_guest()
    if traced:
        vm.bus.set_keep(10**5)
    tdp = vm.tdp_mmu
    root = v.mmu.root.sp
    tables = {lvl: tdp.pool.alloc_page((root.role & ~0xF) | lvl, 0, True) for lvl in (1, 2, 3)}
    return vm, tables


# One change: (table level, index, what the entry becomes).
_CHANGE = st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 5),
                    st.sampled_from(["zero", "leaf", "leaf-ro", "table", "mmio"]),
                    st.integers(0x100, 0x110))


def _new_spte(vm, level, kind, pfn):
    if kind == "zero":
        return 0
    if kind == "mmio":
        return S.make_mmio_spte(pfn, vm.memslots.generation)
    if kind == "table" and level > 1:
        child = vm.tdp_mmu.pool.alloc_page(level - 1, 0, True)
        return S.make_nonleaf_spte(child.pfn)
    return S.make_spte(pfn, level, kind != "leaf-ro")


@settings(max_examples=60, deadline=None)
@given(st.lists(_CHANGE, max_size=25), st.booleans())
def test_handle_changed_spte_matches_the_general_code(changes, traced):
    worlds = []
    for fast in (True, False):
        vm, tables = _vm(traced)
        tdp = vm.tdp_mmu
        if not fast:
            tdp.handle_changed_spte = reference_handle_changed_spte.__get__(tdp)
        for level, index, kind, pfn in changes:
            sp = tables[level]
            old = int.from_bytes(sp.spt[index * 8:index * 8 + 8], "little")
            new = _new_spte(vm, level, kind, pfn)
            present_leaf = old & S.SPTE_MMU_PRESENT and (level == 1 or old & S.PT_PAGE_SIZE)
            if present_leaf and new & S.SPTE_MMU_PRESENT and (old ^ new) & S.PFN_MASK:
                new = 0              # KVM zaps a present leaf before pointing it elsewhere
            if not old & S.SPTE_MMU_PRESENT and not new & S.SPTE_MMU_PRESENT and not (
                    S.is_mmio_spte(old) or S.is_mmio_spte(new)):
                continue             # a change KVM never makes (it would WARN)
            tdp.tdp_mmu_set_spte(sp, index, new, index)
        worlds.append((sorted(vm.stats.items()), vm.mmu_pages.live_sptes,
                       sorted((pfn, bytes(p.spt)) for pfn, p in vm.mmu_pages.pages.items()),
                       [(e.name, sorted(e.fields.items())) for e in vm.bus.log]))
    assert worlds[0] == worlds[1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["create", "delete", "lookup"]), st.integers(0, 7),
                          st.integers(0, 300)), max_size=40))
def test_memslots_lookup_matches_bisection(ops):
    slots = Memslots()
    made = {}
    for op, sid, gfn in ops:
        if op == "create" and sid not in made:
            base, npages = sid * 40, 1 + gfn % 40
            try:
                slots.create(Memslot(sid, base, npages, 0x7F0000000000 + (base << 12)))
                made[sid] = True
            except ValueError:
                pass
        elif op == "delete" and sid in made:
            slots.delete(sid)
            del made[sid]
        else:
            assert slots.lookup(gfn) is slots._lookup(gfn)
            assert slots.lookup(gfn) is slots._lookup(gfn)


def test_reloading_the_same_root_keeps_translations_exact():
    """v6.12 reloads the same root on every SMEP flip; load_mmu_pgd then keeps the fast
    paths. Running on must match a CPU whose fast paths are flushed at every reload."""
    from kvmdbg.kvm.boot import load_program
    from kvmdbg.kvm.scheduler import run_vm
    out = []
    for flush_always in (False, True):
        vm = Vm(16 << 20, 1, profile=get_profile("v6.12"))
        boot(vm, load_program(str(Path(__file__).resolve().parents[2] / "programs" / "smep_flip.bin")),
             0x0400000020)
        v = vm.vcpus[0]
        if flush_always:
            real = type(v).load_mmu_pgd

            def load(root, v=v, real=real):
                real(v, root)
                v.cpu.flush_fast()
            v.load_mmu_pgd = load
        vm.bus.set_keep(10**6)
        run_vm(vm, 10**6)
        c = v.cpu
        out.append((sorted(vm.stats.items()), c.steps, c.cycles, c.walks, list(c.r), c.rip,
                    bytes(vm.console), len(vm.bus.log)))
    assert out[0] == out[1]


def test_ept_violation_error_code_table_matches_the_rule():
    from kvmdbg.mmu.mmu import _ept_error_code, ept_violation_error_code
    for qual in range(1 << 12):          # bits 5:0 decide; the higher ones must not matter
        assert ept_violation_error_code(qual) == _ept_error_code(qual)


def test_vm_exit_keeps_its_fields():
    """VmExit no longer calls BaseException.__init__: its fields, str and args stay sound."""
    from kvmdbg.cpu.vmx import EPT_VIOLATION, VmExit
    e = VmExit(EPT_VIOLATION, 0x182, 0x205000, error_code=3)
    assert (e.reason, e.qualification, e.gpa, e.error_code) == (EPT_VIOLATION, 0x182, 0x205000, 3)
    assert str(e) == "VM exit EPT_VIOLATION gpa 0x205000"
    assert e.args[0] == EPT_VIOLATION


# TdpMmu.fast_leaf_fault (the commonest EPT violation written out) against the general
# direct_page_fault -> kvm_tdp_mmu_map: the same programs run with it and with it refused
# (returning None, "not that case") must end the same in everything the fingerprint holds.
_PROGRAMS = Path(__file__).resolve().parent.parent.parent / "programs"


def _run_both(build, steps, monkeypatch, counts):
    from kvmdbg.kvm.scheduler import run_vm
    from kvmdbg.mmu.tdp_mmu import TdpMmu
    from tests.helpers import vm_fingerprint
    real = TdpMmu.fast_leaf_fault

    def counting(self, vcpu, gfn):
        ret = real(self, vcpu, gfn)
        counts[0] += ret is not None
        return ret
    prints = []
    # Refused, it is refused to both of its users: TdpMmuOps.page_fault and
    # Vcpu.exit_in_place's violation handled whole.
    for fast in (counting, lambda self, vcpu, gfn: None):
        monkeypatch.setattr(TdpMmu, "fast_leaf_fault", fast)
        vm = build()
        run_vm(vm, steps)
        prints.append(vm_fingerprint(vm))
    return prints


@pytest.mark.parametrize("kvm", ["v5.15", "v6.1", "v6.12"])
@pytest.mark.parametrize("name", ["smep_flip", "smep_flip_2vcpu", "pt_edit", "memslot_overlay",
                                  "smap_mmio", "cr0_wp_flip", "upper_half"])
def test_fast_leaf_fault_ends_programs_as_the_general_path(name, kvm, monkeypatch):
    from kvmdbg.kvm.boot import load_program, make_vm
    program = load_program(str(_PROGRAMS / f"{name}.bin"))
    vcpus = 2 if "2vcpu" in name else 1
    counts = [0]
    ours, theirs = _run_both(lambda: make_vm(program, kvm, (), vcpus, 16 << 20, 0), 40_000,
                             monkeypatch, counts)
    assert ours == theirs
    if name == "smep_flip":
        assert counts[0] > 0


@pytest.mark.parametrize("knobs", [(), ("huge_pages=1",)])
def test_fast_leaf_fault_ends_the_access_test_as_the_general_path(knobs, monkeypatch):
    from kvmdbg.kvm.boot import load_program, make_vm
    from tests.helpers import kut_image
    path = str(kut_image("access_test.flat"))
    counts = [0]
    ours, theirs = _run_both(lambda: make_vm(load_program(path), "v5.15", knobs), 300_000,
                             monkeypatch, counts)
    assert ours == theirs
    assert (counts[0] > 0) == (not knobs)        # with huge pages it always steps aside
