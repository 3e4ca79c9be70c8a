"""The legacy direct MMU (tdp_mmu=0): EPT tables built as shadow pages in the hash.

Pages are found by (gfn, role) in kvm->arch.mmu_page_hash; a root whose
root_count drops to 0 simply stays hashed for the next load (mmu_free_root_page
zaps only roots that are already invalid). kvm_mmu_zap_all_fast makes every page
of the old generation obsolete; obsolete roots still in use are invalidated and
die at their last put.
"""

from __future__ import annotations

from kvmdbg.mmu.mmu_internal import ROLE_INVALID, MmuPage
from kvmdbg.mmu.tdp_iter import nonzero_entries


def _trace_get(kvm, vcpu, sp: MmuPage, created: bool) -> None:
    kvm.trace("kvm_mmu_get_page", vcpu.index if vcpu is not None else -1,
              mmu_valid_gen=sp.mmu_valid_gen, gfn=sp.gfn, role=sp.role, root_count=sp.root_count,
              unsync=False, created=created, root=sp.number, hpa=sp.hpa)


def _is_obsolete(kvm, sp: MmuPage) -> bool:
    return bool(sp.role & ROLE_INVALID) or sp.mmu_valid_gen != kvm.mmu_valid_gen


def get_shadow_page(kvm, vcpu, gfn: int, role: int) -> tuple[MmuPage, bool]:
    """kvm_mmu_get_shadow_page: (page, created). A miss counts mmu_cache_miss."""
    sp = kvm.mmu_page_hash.get((gfn, role))
    if sp is not None and not _is_obsolete(kvm, sp):
        _trace_get(kvm, vcpu, sp, False)
        return sp, False
    kvm.stats["mmu_cache_miss"] += 1
    sp = kvm.tdp_mmu.alloc_page(role, gfn, False)
    sp.hashed = True
    kvm.mmu_page_hash[(gfn, role)] = sp
    return sp, True


def mmu_alloc_root(kvm, vcpu, role: int) -> MmuPage:
    sp, created = get_shadow_page(kvm, vcpu, 0, role)
    if created:
        sp.number = kvm.tdp_mmu.next_root_number
        kvm.tdp_mmu.next_root_number += 1
        kvm.stats["roots_allocated"] += 1
        kvm.charge(vcpu, "root_alloc")
    sp.root_count += 1
    if created:
        _trace_get(kvm, vcpu, sp, True)
    return sp


def alloc_child(kvm, vcpu, parent: MmuPage, gfn: int, level: int) -> MmuPage:
    role = (parent.role & ~0xF) | level
    sp, created = get_shadow_page(kvm, vcpu, gfn, role)
    if created:
        _trace_get(kvm, vcpu, sp, True)
    return sp


def mmu_free_root_page(kvm, root: MmuPage, vcpu) -> None:
    root.root_count -= 1
    kvm.trace("kvmdbg:root_put", vcpu.index if vcpu is not None else -1, root=root.number,
              hpa=root.hpa, root_count=root.root_count)
    if root.root_count == 0 and root.role & ROLE_INVALID:
        prepare_zap_tree(kvm, root, vcpu)


def prepare_zap_tree(kvm, sp: MmuPage, payer) -> None:
    """kvm_mmu_prepare_zap_page on a whole tree, then commit (one remote TLB flush)."""
    tdp = kvm.tdp_mmu
    before = kvm.stats["sptes_zapped"]
    kvm.trace("kvm_mmu_prepare_zap_page", kvm.current_vcpu_index(), mmu_valid_gen=sp.mmu_valid_gen,
              gfn=sp.gfn, role=sp.role, root_count=sp.root_count, unsync=False)
    level = sp.role & 0xF
    span = 9 * (level - 1)
    for i, _old in list(nonzero_entries(sp)):
        tdp.tdp_mmu_set_spte(sp, i, 0, sp.gfn + (i << span))
    n = kvm.stats["sptes_zapped"] - before
    kvm.stats["mmu_shadow_zapped"] += 1
    kvm.charge(payer, "spte_zap", n)
    kvm.trace("kvmdbg:root_zap", kvm.current_vcpu_index(), root=sp.number, hpa=sp.hpa, sptes=n)
    kvm.stats["roots_freed"] += 1
    kvm.trace("kvmdbg:root_free", kvm.current_vcpu_index(), root=sp.number, hpa=sp.hpa)
    tdp.free_page(sp)
    kvm.flush_remote_tlbs()


def zap_obsolete_pages(kvm) -> None:
    """kvm_zap_obsolete_pages for roots of the old generation (their trees go with them)."""
    roots = sorted((sp for sp in kvm.mmu_page_hash.values() if sp.parent is None and sp.gfn == 0
                    and sp.number and sp.mmu_valid_gen != kvm.mmu_valid_gen),
                   key=lambda sp: sp.number)
    for sp in roots:
        kvm.mmu_page_hash.pop((sp.gfn, sp.role), None)
        sp.hashed = False
        if sp.root_count > 0:
            sp.role |= ROLE_INVALID
            kvm.stats["roots_invalidated"] += 1
            kvm.trace("kvmdbg:root_invalidate", -1, root=sp.number, hpa=sp.hpa)
        else:
            prepare_zap_tree(kvm, sp, kvm.current)
