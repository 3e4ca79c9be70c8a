"""Each era's behaviour is one small policy object (kvm/policies.py), tested on its own.

Expectations come from the kernel functions each class stands for (named in the tests)
and from the profile table of kvm-mmu-spec section 1, not from kvmdbg's output.
"""

from __future__ import annotations

import pytest

from kvmdbg.arch.kvm_host import KVM_REQ_TLB_FLUSH_CURRENT, KVM_REQ_TLB_FLUSH_GUEST
from kvmdbg.kvm import policies, x86
from kvmdbg.kvm.boot import Program, boot
from kvmdbg.kvm.profiles import PROFILES, get_profile, with_knob
from kvmdbg.kvm.vm import Vm
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import tdp_mmu
from kvmdbg.mmu.legacy import LegacyMmuOps
from kvmdbg.mmu.shadow_mmu import ShadowMmuOps

CR4_PGE, CR4_SMEP = 1 << 7, 1 << 20


def entered(profile="v6.12", **knobs):
    p = get_profile(profile)
    for k, v in knobs.items():
        p = with_knob(p, f"{k}={v}")
    vm = Vm(16 << 20, 1, profile=p)
    boot(vm, Program(b"\xf4"))
    v = vm.vcpus[0]
    vm.current = v
    v.enter_guest()
    return vm, v


# --- which object each profile gets ---

@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_picks_the_objects_its_knobs_name(name):
    p = PROFILES[name]
    vm = Vm(16 << 20, 1, profile=p)
    ops = vm.mmu_ops
    if not p.tdp_enabled:
        assert isinstance(ops, ShadowMmuOps) and not ops.direct           # init_kvm_softmmu
    elif p.tdp_mmu:
        assert isinstance(ops, tdp_mmu.TdpMmuOps) and ops.direct          # init_kvm_tdp_mmu
    else:
        assert isinstance(ops, LegacyMmuOps) and ops.direct
    assert all(v.mmu.ops is ops for v in vm.vcpus)
    put = {"sync_zap": tdp_mmu.ZapOnLastPut, "async_zap": tdp_mmu.ZapOnWorker,
           "keep": tdp_mmu.KeepUntilInvalidated}[p.tdp_put_last_ref]
    assert type(vm.tdp_mmu.root_put) is put
    zap = vm.tdp_mmu.invalidated_zap
    if p.invalid_root_zap == "workqueue":
        assert type(zap) is tdp_mmu.ZapInvalidatedOnWorker
    else:
        assert type(zap) is tdp_mmu.ZapInvalidatedInPlace and zap.flush_each == p.invalid_root_zap_flush
    cr4 = vm.policies.post_set_cr4
    if p.rfc_skip_post_set_cr4 and p.tdp_mmu:
        assert type(cr4) is x86.PostSetCr4Skipped
    else:
        assert type(cr4) is (x86.PostSetCr4Split if p.cr4_flush_split else x86.PostSetCr4PreLai)
    assert type(vm.policies.post_set_cr0_wp) is (x86.Cr0WpReinitsOnly if p.cr0_wp_no_unload
                                                 else x86.Cr0WpResets)
    assert type(vm.policies.flush_shadow_memslot) is (policies.SlotZapAll if p.slot_zap_all
                                                      else policies.SlotZapLeafs)


def test_set_kvm_chooses_again():
    vm, _v = entered("v6.1")
    assert type(vm.tdp_mmu.root_put) is tdp_mmu.ZapOnWorker
    vm.set_profile(with_knob(vm.profile, "tdp_put_last_ref=keep"))
    assert type(vm.tdp_mmu.root_put) is tdp_mmu.KeepUntilInvalidated


# --- what a root's last put does (kvm_tdp_mmu_put_root) ---

def test_zap_on_last_put_zaps_and_frees_at_once():
    """v5.10-v5.17 kvm_tdp_mmu_put_root: the last reference zaps the root in the caller."""
    vm, v = entered("v5.15")
    M.kvm_mmu_page_fault(v, 0x200000, 2)
    root = v.mmu.root.sp
    assert root.root_count == 1
    M.kvm_mmu_unload(v)
    assert root.freed and root not in vm.tdp_mmu.roots and not vm.worker.queue


def test_zap_on_worker_queues_the_zap():
    """22b94c4b63eb: the last put marks the root invalid and queues tdp_mmu_zap_root_work,
    which keeps a reference until it ran."""
    vm, v = entered("v6.1")
    M.kvm_mmu_page_fault(v, 0x200000, 2)
    root = v.mmu.root.sp
    M.kvm_mmu_unload(v)
    assert root.invalid and not root.freed and root.root_count == 1 and len(vm.worker.queue) == 1
    vm.run_worker_item()
    assert root.freed


def test_keep_until_invalidated_holds_a_reference():
    """edbdb43fc96b: kvm_tdp_mmu_alloc_root starts a root at two references (one the TDP
    MMU's), so unload leaves it alive and reusable."""
    vm, v = entered("v6.12")
    root = v.mmu.root.sp
    assert root.root_count == 2
    M.kvm_mmu_unload(v)
    assert root.root_count == 1 and not root.freed and root in vm.tdp_mmu.roots
    v.enter_guest()
    assert v.mmu.root.sp is root


# --- how invalidated roots are zapped (kvm_tdp_mmu_zap_invalidated_roots) ---

@pytest.mark.parametrize("profile,on_worker", [("v6.1", True), ("v6.6", False), ("v5.15", False)])
def test_invalidated_roots_are_zapped_where_the_era_zaps_them(profile, on_worker):
    """v5.18-v6.5 queue each invalidated root on the worker and the memslot update waits
    (flush_workqueue: the worker's cycles); 0df9dab891ff zaps them in the ioctl's thread."""
    vm, v = entered(profile)
    M.kvm_mmu_page_fault(v, 0x200000, 2)
    vm.kvm_mmu_zap_all_fast()
    assert vm.stats["kvmdbg_worker_cycles"] > 0 if on_worker else vm.stats["kvmdbg_worker_cycles"] == 0
    assert not vm.worker.queue
    assert all(r.invalid or r.freed for r in [v.mmu.root.sp])


def test_in_place_zap_flushes_per_top_level_spte_before_v5_18():
    """Before v5.18, zap_gfn_range(shared=true) flushed remote TLBs through
    tdp_mmu_zap_spte_atomic once per top-level SPTE zapped; the 2022 series dropped that."""
    counts = {}
    for flush_each in (True, False):
        vm, v = entered("v6.6", invalid_root_zap_flush=int(flush_each))
        M.kvm_mmu_page_fault(v, 0x200000, 2)
        M.kvm_mmu_page_fault(v, 0x80_0000_0000, 2)      # PML4 index 1: a second top-level SPTE
        before = vm.stats["remote_tlb_flush_requests"]
        vm.kvm_mmu_zap_all_fast()
        counts[flush_each] = vm.stats["remote_tlb_flush_requests"] - before
    assert counts[True] - counts[False] == 2


# --- kvm_post_set_cr4 / kvm_post_set_cr0 ---

def _cr4_change(profile, old, new):
    vm, v = entered(profile)
    v.requests.clear()
    resets = vm.stats["kvmdbg_mmu_resets"]
    vm.policies.post_set_cr4(v, old, new)
    return vm.stats["kvmdbg_mmu_resets"] - resets, set(v.requests)


def test_post_set_cr4_pre_lai_resets_on_pge():
    """<= v5.15 kvm_post_set_cr4: PGE is in KVM_MMU_CR4_ROLE_BITS, so toggling it resets."""
    assert _cr4_change("v5.15", 0x620, 0x620 | CR4_PGE) == (1, set())


def test_post_set_cr4_split_requests_a_guest_flush_for_pge():
    """f4bc051fc91a: a PGE toggle is no role change; KVM_REQ_TLB_FLUSH_GUEST instead. SMEP
    0->1 resets (a role bit) and asks for KVM_REQ_TLB_FLUSH_CURRENT."""
    assert _cr4_change("v6.12", 0x620, 0x620 | CR4_PGE) == (0, {KVM_REQ_TLB_FLUSH_GUEST})
    assert _cr4_change("v6.12", 0x620, 0x620 | CR4_SMEP) == (1, {KVM_REQ_TLB_FLUSH_CURRENT})
    assert _cr4_change("v6.12", 0x620 | CR4_SMEP, 0x620) == (1, set())


def test_post_set_cr4_skipped_by_the_rfc_patch():
    assert _cr4_change("rfc-skip-post-set-cr4", 0x620, 0x620 | CR4_SMEP) == (0, set())


@pytest.mark.parametrize("profile,resets", [("v6.1", 1), ("v6.4", 0)])
def test_post_set_cr0_wp_only(profile, resets):
    """01b31714bd90: with TDP, a WP-only change just re-inits the MMU; before, it reset."""
    vm, v = entered(profile)
    before = vm.stats["kvmdbg_mmu_resets"]
    x86.kvm_post_set_cr0(v, 0x80010033, 0x80000033)
    assert vm.stats["kvmdbg_mmu_resets"] - before == resets


# --- kvm_arch_flush_shadow_memslot ---

@pytest.mark.parametrize("quirk,root_survives", [(1, False), (0, True)])
def test_slot_flush_policies(quirk, root_survives):
    """KVM_X86_QUIRK_SLOT_ZAP_ALL: kvm_mmu_zap_all_fast; without it kvm_mmu_zap_memslot
    zaps only the slot's leaves and the roots stay valid."""
    from kvmdbg.mem import Memslot
    vm, v = entered("v6.12", slot_zap_all=quirk)
    vm.set_memory_region("create", Memslot(5, 0x8000, 16, vm.host.mmap(16 << 12)))
    M.kvm_mmu_page_fault(v, 0x8000 << 12, 2)
    vm.set_memory_region("delete", vm.memslots.by_id(5))
    assert (not v.mmu.root.sp.invalid) == root_survives
