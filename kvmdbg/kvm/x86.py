"""KVM's generic x86 side (mirrors x86.c and the MMU entry points of mmu.c).

kvm_set_cr0/cr3/cr4 and their kvm_post_set_* decisions per profile (kvm-mmu-spec
2.3-2.5), EFER, the request servicing order of vcpu_enter_guest (2.6), and the
MMU context operations: kvm_init_mmu, kvm_mmu_reset_context, kvm_mmu_load,
kvm_mmu_reload, kvm_mmu_unload, kvm_mmu_free_roots, kvm_mmu_page_fault.
"""

from __future__ import annotations

from kvmdbg.cpu import system
from kvmdbg.cpu.faults import GP, GuestFault
from kvmdbg.cpu.regs import (AC, CR0_PG, CR0_WP, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_SMEP,
                             EFER_LME, EFER_NXE)
from kvmdbg.mmu import legacy
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu.mmu_internal import PageFault, RetPF

KVM_REQ_TLB_FLUSH = "KVM_REQ_TLB_FLUSH"
KVM_REQ_TLB_FLUSH_CURRENT = "KVM_REQ_TLB_FLUSH_CURRENT"
KVM_REQ_TLB_FLUSH_GUEST = "KVM_REQ_TLB_FLUSH_GUEST"
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"
KVM_REQ_MMU_RELOAD = "KVM_REQ_MMU_RELOAD"

CR0_ROLE_BITS = M.KVM_MMU_CR0_ROLE_BITS


# --- MMU context ---

def kvm_init_mmu(vcpu) -> None:
    """Compute cpu_role and root_role; rebuild permission tables only if they changed."""
    cpu = vcpu.cpu
    kvm = vcpu.kvm
    mmu = vcpu.mmu
    cpu_role = M.kvm_calc_cpu_role(cpu.cr0, cpu.cr4, cpu.efer, smm=vcpu.smm)
    root_role = M.kvm_calc_tdp_mmu_root_page_role(
        cpu_role, kvm.profile.tdp_root_role_has_guest_bits)
    if cpu_role == mmu.cpu_role and root_role == mmu.root_role:
        return
    mmu.cpu_role = cpu_role
    mmu.root_role = root_role
    M.update_permission_bitmask(mmu, ept=False)
    if kvm.bus.active:
        kvm.trace("kvmdbg:init_mmu", vcpu.index, cpu_role=cpu_role, root_role=root_role)


def kvm_mmu_reset_context(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["mmu_resets"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_reset_context", vcpu.index)
    vcpu.cpu.extra_cycles += kvm.costs.values["mmu_reset"]
    kvm_mmu_unload(vcpu)
    kvm_init_mmu(vcpu)


def kvm_mmu_unload(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["mmu_unloads"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_unload", vcpu.index)
    kvm_mmu_free_roots(vcpu, M.KVM_MMU_ROOTS_ALL)


def mmu_free_root_page(vcpu, sp) -> None:
    kvm = vcpu.kvm
    if sp.tdp_mmu_page:
        kvm.tdp_mmu.put_root(sp, vcpu)
    else:
        legacy.mmu_free_root_page(kvm, sp, vcpu)


def kvm_mmu_free_roots(vcpu, roots_to_free: int) -> None:
    """Put the selected roots (prev_roots first, then the current one, as KVM does)."""
    mmu = vcpu.mmu
    prev = mmu.prev_roots
    for i in range(M.KVM_MMU_NUM_PREV_ROOTS):
        if prev[i].sp is not None and roots_to_free & (2 << i):
            mmu_free_root_page(vcpu, prev[i].sp)
            prev[i] = M.RootInfo()
    if roots_to_free & M.KVM_MMU_ROOT_CURRENT and mmu.root.sp is not None:
        mmu_free_root_page(vcpu, mmu.root.sp)
        mmu.root = M.RootInfo()


def kvm_mmu_load(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["mmu_loads"] += 1
    vcpu.cpu.extra_cycles += kvm.costs.values["mmu_load"]
    role = vcpu.mmu.root_role
    if kvm.profile.tdp_mmu:
        root = kvm.tdp_mmu.get_vcpu_root(vcpu, role)
    else:
        root = legacy.mmu_alloc_root(kvm, vcpu, role)
    vcpu.mmu.root = M.RootInfo(0, root)
    vcpu.load_mmu_pgd(root)
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_load", vcpu.index, root=root.number, hpa=root.hpa)
    # kvm_mmu_load flushes the current context unconditionally: the root's past is unknown.
    vcpu.flush_tlb_current()


def kvm_mmu_reload(vcpu) -> None:
    if not vcpu.mmu.root.valid:
        kvm_mmu_load(vcpu)


def is_obsolete_root(kvm, sp) -> bool:
    if sp is None:
        return False
    if sp.role & R.ROLE_INVALID or sp.freed:
        return True
    return (not sp.tdp_mmu_page) and sp.mmu_valid_gen != kvm.mmu_valid_gen


def kvm_mmu_free_obsolete_roots(vcpu) -> None:
    mmu = vcpu.mmu
    mask = 0
    if is_obsolete_root(vcpu.kvm, mmu.root.sp):
        mask |= M.KVM_MMU_ROOT_CURRENT
    for i in range(M.KVM_MMU_NUM_PREV_ROOTS):
        if is_obsolete_root(vcpu.kvm, mmu.prev_roots[i].sp):
            mask |= M.KVM_MMU_ROOT_PREVIOUS(i)
    kvm_mmu_free_roots(vcpu, mask)


def refresh_passthrough_bits(vcpu):
    """kvm_mmu_refresh_passthrough_bits (cf9f4c0eb169): with TDP and a guest-owned
    CR0.WP, pick up the live WP before an emulated permission check."""
    def refresh(mmu):
        kvm = vcpu.kvm
        if not (kvm.profile.tdp_enabled and kvm.profile.cr0_wp_guest_owned):
            return
        wp = bool(vcpu.cpu.cr0 & CR0_WP)
        if wp == bool(mmu.cpu_role & R.ROLE_CR0_WP):
            return
        mmu.cpu_role ^= R.ROLE_CR0_WP
        M.update_permission_bitmask(mmu, ept=False)
    return refresh


# --- page faults (kvm_mmu_page_fault for a direct MMU) ---

def kvm_mmu_hugepage_adjust(kvm, fault, slot) -> None:
    """goal_level = the largest level the memslot (whole, aligned range) and the host
    mapping level allow (kvm-mmu-spec 5.4; no NX-huge-page mitigation, no dirty logging)."""
    for level in (3, 2):
        span = 9 * (level - 1)
        base = fault.gfn & ~((1 << span) - 1)
        if base < slot.base_gfn or base + (1 << span) > slot.end_gfn:
            continue
        hva = slot.gfn_to_hva(base)
        if hva & ((1 << (span + 12)) - 1):
            continue                                    # gfn and hva not aligned alike
        if kvm.host.host_mapping_level(hva) >= level:
            fault.req_level = fault.goal_level = level
            return


def kvm_mmu_page_fault(vcpu, gpa: int, error_code: int) -> RetPF:
    kvm = vcpu.kvm
    kvm.stats["pf_taken"] += 1
    fault = PageFault(gpa, error_code)
    slot = kvm.memslots.lookup(fault.gfn)
    fault.slot = slot
    if slot is not None:
        fault.map_writable = not slot.flags & 2          # KVM_MEM_READONLY
        if kvm.profile.huge_pages:
            kvm_mmu_hugepage_adjust(kvm, fault, slot)
        base_gfn = fault.gfn & ~((1 << (9 * (fault.goal_level - 1))) - 1)
        fault.pfn = kvm.host.hva_to_pfn(slot.gfn_to_hva(base_gfn))
    root = vcpu.mmu.root.sp
    if root is None or is_obsolete_root(kvm, root):
        return RetPF.RETRY                                  # is_page_fault_stale
    if kvm.profile.tdp_mmu:
        alloc = lambda parent, gfn, level: kvm.tdp_mmu.alloc_page((parent.role & ~0xF) | level, gfn, True)  # noqa: E731
    else:
        alloc = lambda parent, gfn, level: legacy.alloc_child(kvm, vcpu, parent, gfn, level)  # noqa: E731
    ret = kvm.tdp_mmu.map(vcpu, root, fault, alloc)
    if ret == RetPF.FIXED:
        kvm.stats["pf_fixed"] += 1
    elif ret == RetPF.SPURIOUS:
        kvm.stats["pf_spurious"] += 1
    elif ret == RetPF.EMULATE:
        kvm.stats["pf_emulate"] += 1
    return ret


# --- control registers (x86.c) ---

def kvm_set_cr0(vcpu, cr0: int) -> None:
    cpu = vcpu.cpu
    old = cpu.cr0
    system.check_cr0(cpu, cr0)                 # kvm_is_valid_cr0 and the long-mode rules
    vcpu.write_cr0(cr0)                         # vmx_set_cr0
    kvm_post_set_cr0(vcpu, old, cpu.cr0)


def kvm_post_set_cr0(vcpu, old: int, new: int) -> None:
    kvm = vcpu.kvm
    p = kvm.profile
    d = old ^ new
    if d == CR0_WP and p.cr0_wp_no_unload:
        if not new & CR0_PG:
            return
        if p.tdp_enabled:
            kvm_init_mmu(vcpu)
            return
    if d & CR0_PG and not new & CR0_PG:
        vcpu.make_request(KVM_REQ_TLB_FLUSH_GUEST)
    if d & CR0_ROLE_BITS:
        kvm_mmu_reset_context(vcpu)


def kvm_set_cr4(vcpu, cr4: int) -> None:
    cpu = vcpu.cpu
    old = cpu.cr4
    system.check_cr4(cpu, cr4)
    vcpu.write_cr4(cr4)                         # vmx_set_cr4: GUEST_CR4 and the read shadow
    if vcpu.kvm.profile.rfc_skip_post_set_cr4 and vcpu.kvm.profile.tdp_mmu:
        return                                  # the RFC patch: fast, and wrong
    kvm_post_set_cr4(vcpu, old, cr4)


def kvm_post_set_cr4(vcpu, old: int, new: int) -> None:
    """kvm-mmu-spec 2.3: the decision table of each era."""
    p = vcpu.kvm.profile
    d = old ^ new
    if not p.cr4_flush_split:
        # <= v5.15 (pre-Lai): PGE is a role bit; PCIDE 1->0 also resets.
        if d & M.KVM_MMU_CR4_ROLE_BITS_PRE_LAI or (old & CR4_PCIDE and not new & CR4_PCIDE):
            kvm_mmu_reset_context(vcpu)
        return
    if d & M.KVM_MMU_CR4_ROLE_BITS:
        kvm_mmu_reset_context(vcpu)
    if not p.tdp_enabled and not old & CR4_PCIDE and new & CR4_PCIDE:
        kvm_mmu_unload(vcpu)
    if d & CR4_PGE or (old & CR4_PCIDE and not new & CR4_PCIDE):
        vcpu.make_request(KVM_REQ_TLB_FLUSH_GUEST)
    elif d & CR4_PAE or (new & CR4_SMEP and not old & CR4_SMEP):
        vcpu.make_request(KVM_REQ_TLB_FLUSH_CURRENT)


def kvm_set_efer(vcpu, efer: int) -> None:
    cpu = vcpu.cpu
    old = cpu.efer
    new = system.check_efer(cpu, efer)
    cpu.efer = new
    cpu.flush_fast()
    if (old ^ new) & (EFER_NXE | EFER_LME):
        kvm_mmu_reset_context(vcpu)


def rflags_ac(vcpu) -> bool:
    return bool(vcpu.cpu.get_rflags() & AC)


__all__ = ["kvm_set_cr0", "kvm_set_cr4", "kvm_set_efer", "kvm_post_set_cr4", "kvm_post_set_cr0",
           "kvm_init_mmu", "kvm_mmu_reset_context", "kvm_mmu_load", "kvm_mmu_reload",
           "kvm_mmu_unload", "kvm_mmu_free_roots", "kvm_mmu_free_obsolete_roots",
           "kvm_mmu_page_fault", "GP", "GuestFault"]
