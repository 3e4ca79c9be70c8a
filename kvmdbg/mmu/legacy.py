"""The legacy direct MMU (tdp_mmu=0): EPT tables built as direct shadow pages.

With the TDP MMU off, KVM builds the EPT out of the shadow MMU's pages (mmu.c): found by
(gfn, role) in mmu_page_hash, kept on active_mmu_pages, and zapped, committed and freed
by the same code as shadow paging's pages. So these pages live in the VM's ShadowMmu
(shadow_mmu.py), which does the lookups, the zaps (__kvm_mmu_prepare_zap_page, counting
mmu_shadow_zapped per page), kvm_zap_obsolete_pages and mmu_free_root_page; only the walk
that installs SPTEs is the TDP MMU table code's (tdp_mmu.py's map, in the EPT format).
A root whose root_count drops to 0 stays hashed for the next load; kvm_mmu_zap_all_fast
makes every page obsolete, and a root still in use dies at its last put.
"""

from __future__ import annotations

from kvmdbg.mmu.mmu import DirectMmuOps, RootInfo
from kvmdbg.mmu.mmu_internal import MmuPage


def _trace_get(kvm, vcpu, sp: MmuPage, created: bool) -> None:
    kvm.trace("kvm_mmu_get_page", vcpu.index if vcpu is not None else -1,
              mmu_valid_gen=sp.mmu_valid_gen, gfn=sp.gfn, role=sp.role, root_count=sp.root_count,
              unsync=False, created=created, root=sp.number, hpa=sp.hpa)


def get_shadow_page(kvm, vcpu, gfn: int, role: int) -> tuple[MmuPage, bool]:
    """kvm_mmu_get_shadow_page for a direct role: (page, created). A miss counts
    mmu_cache_miss (kvm_mmu_find_shadow_page)."""
    shadow = kvm.shadow_mmu
    sp = shadow.find(vcpu, gfn, role, [])          # direct pages are never unsync
    if sp is not None:
        _trace_get(kvm, vcpu, sp, False)
        return sp, False
    return shadow.alloc(gfn, role), True


def mmu_alloc_root(kvm, vcpu, role: int) -> MmuPage:
    sp, created = get_shadow_page(kvm, vcpu, 0, role)
    if created:
        kvm.mmu_pages.number_root(sp)
        kvm.stats["kvmdbg_roots_allocated"] += 1
        kvm.charge(vcpu, "root_alloc")
    sp.root_count += 1
    if created:
        _trace_get(kvm, vcpu, sp, True)
    return sp


def alloc_child(kvm, vcpu, parent: MmuPage, gfn: int, level: int) -> MmuPage:
    """The table for (gfn, level) under parent; the caller links it (TdpMmu.map). The link
    is recorded in parent_ptes, as __link_shadow_page does, so a zap can unlink it."""
    role = (parent.role & ~0xF) | level
    sp, created = get_shadow_page(kvm, vcpu, gfn, role)
    if created:
        _trace_get(kvm, vcpu, sp, True)
    sp.parent_ptes[(parent, (gfn >> (9 * level)) & 511)] = None
    return sp


class LegacyMmuOps(DirectMmuOps):
    """init_kvm_tdp_mmu with tdp_mmu=0: direct roots found by role in the hash (they
    survive unload), freed by the shadow MMU's code, faults through direct_map (the TDP
    table walk with shadow pages for tables)."""

    def alloc_root(self, vcpu) -> RootInfo:
        return RootInfo(0, mmu_alloc_root(self.kvm, vcpu, vcpu.mmu.root_role))

    def free_root(self, vcpu, sp, invalid: list) -> None:
        self.kvm.shadow_mmu.free_root(vcpu, sp, invalid)

    def map_fault(self, vcpu, root, fault):
        kvm = self.kvm
        return kvm.tdp_mmu.map(vcpu, root, fault,
                               lambda parent, gfn, level: alloc_child(kvm, vcpu, parent, gfn, level))
