"""KVM's generic x86 side (mirrors x86.c and the MMU entry points of mmu.c).

kvm_set_cr0/cr3/cr4 and their kvm_post_set_* decisions per profile (kvm-mmu-spec
2.3-2.5), EFER, the request servicing order of vcpu_enter_guest (2.6), and the
MMU context operations: kvm_init_mmu, kvm_mmu_reset_context, kvm_mmu_load,
kvm_mmu_reload, kvm_mmu_unload, kvm_mmu_free_roots, kvm_mmu_page_fault.
"""

from __future__ import annotations

from kvmdbg.arch.kvm_host import (KVM_REQ_LOAD_MMU_PGD, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,  # noqa: F401
                                  KVM_REQ_MMU_RELOAD, KVM_REQ_MMU_SYNC, KVM_REQ_SMI,
                                  KVM_REQ_TLB_FLUSH, KVM_REQ_TLB_FLUSH_CURRENT,
                                  KVM_REQ_TLB_FLUSH_GUEST)
from kvmdbg.bits import canonical
from kvmdbg.cpu import system
from kvmdbg.cpu.faults import GP, PF, GuestFault
from kvmdbg.cpu.regs import (AC, CR0_PG, CR0_WP, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_SMEP,
                             EFER_LME, EFER_NXE, MAXPHYADDR)
from kvmdbg.mmu import legacy
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import paging_tmpl
from kvmdbg.mmu import shadow_mmu as SH
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu_internal import ACC_EXEC, ACC_USER, ACC_WRITE, PageFault, RetPF

_CR3_ADDR = ((1 << 52) - 1) & ~0xFFF

CR0_ROLE_BITS = M.KVM_MMU_CR0_ROLE_BITS
_ROLES_MEMO: dict = {}           # see kvm_init_mmu


# --- MMU context ---

def kvm_init_mmu(vcpu) -> None:
    """Compute cpu_role and root_role; rebuild permission tables only if they changed."""
    cpu = vcpu.cpu
    kvm = vcpu.kvm
    mmu = vcpu.mmu
    p = kvm.profile
    # The roles are a pure function of these registers and two profile knobs; a guest
    # that flips one CR bit in a loop asks for the same two answers each time.
    key = (cpu.cr0, cpu.cr4, cpu.efer, vcpu.smm, p.tdp_enabled, p.tdp_root_role_has_guest_bits)
    roles = _ROLES_MEMO.get(key)
    if roles is None:
        cpu_role = M.kvm_calc_cpu_role(cpu.cr0, cpu.cr4, cpu.efer, smm=vcpu.smm)
        if p.tdp_enabled:
            root_role = M.kvm_calc_tdp_mmu_root_page_role(cpu_role, p.tdp_root_role_has_guest_bits)
        else:
            root_role = SH.kvm_calc_shadow_root_role(cpu_role)      # kvm_init_shadow_mmu
        if len(_ROLES_MEMO) >= 4096:
            _ROLES_MEMO.clear()
        roles = _ROLES_MEMO[key] = (cpu_role, root_role)
    cpu_role, root_role = roles
    if cpu_role == mmu.cpu_role and root_role == mmu.root_role:
        return
    mmu.cpu_role = cpu_role
    mmu.root_role = root_role
    M.update_permission_bitmask(mmu, ept=False)
    if kvm.bus.active:
        kvm.trace("kvmdbg:init_mmu", vcpu.index, cpu_role=cpu_role, root_role=root_role)


def kvm_mmu_reset_context(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["kvmdbg_mmu_resets"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_reset_context", vcpu.index)
    vcpu.cpu.extra_cycles += kvm.costs.values["mmu_reset"]
    kvm_mmu_unload(vcpu)
    kvm_init_mmu(vcpu)


def kvm_mmu_unload(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["kvmdbg_mmu_unloads"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_unload", vcpu.index)
    kvm_mmu_free_roots(vcpu, M.KVM_MMU_ROOTS_ALL)


def mmu_free_root_page(vcpu, sp, invalid: list) -> None:
    kvm = vcpu.kvm
    if sp.tdp_mmu_page:
        kvm.tdp_mmu.put_root(sp, vcpu)
    else:
        kvm.shadow_mmu.free_root(vcpu, sp, invalid)      # shadow paging or the legacy MMU


def kvm_mmu_free_roots(vcpu, roots_to_free: int) -> None:
    """Put the selected roots (prev_roots first, then the current one, as KVM does); shadow
    pages zapped on the way are committed with one remote TLB flush."""
    mmu = vcpu.mmu
    prev = mmu.prev_roots
    invalid: list = []
    if prev.count(M.INVALID_ROOT) != len(prev):          # TDP never fills prev_roots
        for i, info in enumerate(prev):
            if info.sp is not None and roots_to_free & (2 << i):
                mmu_free_root_page(vcpu, info.sp, invalid)
                prev[i] = M.INVALID_ROOT
    if roots_to_free & M.KVM_MMU_ROOT_CURRENT and mmu.root.sp is not None:
        mmu_free_root_page(vcpu, mmu.root.sp, invalid)
        mmu.root = M.INVALID_ROOT
    if invalid:
        vcpu.kvm.shadow_mmu.commit_zap_page(invalid)


def kvm_mmu_load(vcpu) -> None:
    kvm = vcpu.kvm
    p = kvm.profile
    kvm.stats["kvmdbg_mmu_loads"] += 1
    vcpu.cpu.extra_cycles += kvm.costs.values["mmu_load"]
    role = vcpu.mmu.root_role
    if not p.tdp_enabled:
        # mmu_alloc_shadow_roots: the root shadows the guest's top table (CR3), found by
        # (gfn, role) in the hash; then kvm_mmu_sync_roots.
        shadow = kvm.shadow
        shadow.make_mmu_pages_available()
        pgd = vcpu.cpu.cr3
        root = shadow.alloc_root(vcpu, (pgd & _CR3_ADDR) >> 12, role)
        vcpu.mmu.root = M.RootInfo(pgd, root)
        shadow.sync_root(vcpu, root)
    elif p.tdp_mmu:
        root = kvm.tdp_mmu.get_vcpu_root(vcpu, role)
        vcpu.mmu.root = M.RootInfo(0, root)
    else:
        root = legacy.mmu_alloc_root(kvm, vcpu, role)
        vcpu.mmu.root = M.RootInfo(0, root)
    vcpu.load_mmu_pgd(root)
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_load", vcpu.index, root=root.number, hpa=root.hpa)
    # kvm_mmu_load flushes the current context unconditionally: the root's past is unknown.
    vcpu.flush_tlb_current()


def kvm_mmu_reload(vcpu) -> None:
    if vcpu.mmu.root.sp is None:
        kvm_mmu_load(vcpu)


def kvm_mmu_load_pgd(vcpu) -> None:
    """KVM_REQ_LOAD_MMU_PGD: point the hardware at the current root (no flush)."""
    root = vcpu.mmu.root.sp
    if root is not None:
        vcpu.load_mmu_pgd(root)


def kvm_mmu_sync_roots(vcpu) -> None:
    """KVM_REQ_MMU_SYNC (shadow paging): resync the unsync pages under the current root."""
    if vcpu.kvm.profile.tdp_enabled:
        return
    vcpu.kvm.shadow.sync_root(vcpu, vcpu.mmu.root.sp)


def kvm_mmu_sync_prev_roots(vcpu) -> None:
    if vcpu.kvm.profile.tdp_enabled:
        return
    for info in vcpu.mmu.prev_roots:
        vcpu.kvm.shadow.sync_root(vcpu, info.sp)


# The three local flushes each count one tlb_flush (x86.c), whatever the vendor hook then
# finds to do; kvm_mmu_load's own flush calls the hook directly and is not counted.

def kvm_vcpu_flush_tlb_all(vcpu) -> None:
    """KVM_REQ_TLB_FLUSH: every context, which covers a pending FLUSH_CURRENT too."""
    vcpu.kvm.stats["tlb_flush"] += 1
    vcpu.flush_tlb_all()
    vcpu.requests.discard(KVM_REQ_TLB_FLUSH_CURRENT)


def kvm_vcpu_flush_tlb_current(vcpu) -> None:
    """KVM_REQ_TLB_FLUSH_CURRENT: counted even when vmx_flush_tlb_current does nothing
    because the root is invalid (a SMEP 0->1 flip unloaded it; kvm_mmu_load flushes)."""
    vcpu.kvm.stats["tlb_flush"] += 1
    vcpu.flush_tlb_current()


def kvm_vcpu_flush_tlb_guest(vcpu) -> None:
    """KVM_REQ_TLB_FLUSH_GUEST: with shadow paging a guest TLB flush is INVPCID(all), so
    every root is synced first; then vmx_flush_tlb_guest."""
    vcpu.kvm.stats["tlb_flush"] += 1
    if not vcpu.kvm.profile.tdp_enabled:
        kvm_mmu_sync_roots(vcpu)
        kvm_mmu_sync_prev_roots(vcpu)
    vcpu.flush_tlb_guest()


def kvm_service_local_tlb_flush_requests(vcpu) -> None:
    reqs = vcpu.requests
    if KVM_REQ_TLB_FLUSH_CURRENT in reqs:
        reqs.discard(KVM_REQ_TLB_FLUSH_CURRENT)
        kvm_vcpu_flush_tlb_current(vcpu)
    if KVM_REQ_TLB_FLUSH_GUEST in reqs:
        reqs.discard(KVM_REQ_TLB_FLUSH_GUEST)
        kvm_vcpu_flush_tlb_guest(vcpu)


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


_OUTCOME_STATS = {RetPF.FIXED: "pf_fixed", RetPF.SPURIOUS: "pf_spurious", RetPF.EMULATE: "pf_emulate"}


def _count_outcome(kvm, ret: RetPF) -> None:
    """KVM's pf_fixed / pf_spurious / pf_emulate counters."""
    stat = _OUTCOME_STATS.get(ret)
    if stat is not None:
        kvm.stats[stat] += 1


def kvm_mmu_page_fault(vcpu, gpa: int, error_code: int) -> RetPF:
    kvm = vcpu.kvm
    if not kvm.profile.tdp_enabled:
        return kvm_shadow_page_fault(vcpu, gpa, error_code)
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
    _count_outcome(kvm, ret)
    return ret


# --- shadow paging: the #PF intercept (FNAME(page_fault)), INVLPG, CR3 ---

def guest_walk(vcpu, addr: int, pfec: int) -> paging_tmpl.GuestWalker:
    """FNAME(walk_addr) on the vCPU's current guest state."""
    kvm = vcpu.kvm
    cpu = vcpu.cpu
    trace = (lambda name, **f: kvm.trace(name, vcpu.index, **f)) if kvm.bus.active else None
    return paging_tmpl.walk_addr(vcpu.mmu, kvm.read_gpa, kvm.write_gpa, cpu.cr3, addr, pfec,
                                 bool(cpu.get_rflags() & AC),
                                 cpu.pkru if cpu.cr4 & CR4_PKE else 0,
                                 refresh_passthrough_bits(vcpu), trace, MAXPHYADDR)


def inject_page_fault(vcpu, error_code: int, address: int):
    kvm = vcpu.kvm
    kvm.stats["pf_guest"] += 1
    if kvm.bus.active:
        kvm.trace("kvm_inj_exception", vcpu.index, exception=PF, has_error=True,
                  error_code=error_code)
    raise GuestFault(PF, error_code, address)


def kvm_shadow_page_fault(vcpu, addr: int, error_code: int) -> RetPF:
    """A #PF the hardware raised on KVM's shadow tables: either the guest's own fault
    (injected, as its tables say) or a missing/insufficient SPTE (built from the guest's
    tables). Returns FIXED/SPURIOUS (re-execute), EMULATE or RETRY."""
    kvm = vcpu.kvm
    shadow = kvm.shadow
    root = vcpu.mmu.root.sp
    stale = root is None or is_obsolete_root(kvm, root)
    if error_code & M.PFERR_RSVD and not stale:
        # handle_mmio_page_fault: an MMIO SPTE of the current memslot generation is
        # emulated by kvm_mmu_page_fault before kvm_mmu_do_page_fault counts pf_taken.
        _sp, _i, spte = shadow.leaf_spte(root, addr)
        if S.is_shadow_mmio_spte(spte):
            gen = S.get_mmio_spte_gen(spte)
            if kvm.bus.active:
                kvm.trace("check_mmio_spte", vcpu.index, kvm_gen=kvm.memslots.generation & S.MMIO_GEN_MASK,
                          spte_gen=gen, spte=spte)
            if gen == kvm.memslots.generation & S.MMIO_GEN_MASK:
                if kvm.bus.active:
                    kvm.trace("handle_mmio_page_fault", vcpu.index, addr=addr,
                              gfn=S.shadow_mmio_gfn(spte), access=7)
                return RetPF.EMULATE
    kvm.stats["pf_taken"] += 1
    if stale:
        return RetPF.RETRY                                   # is_page_fault_stale
    pfec = error_code & (M.PFERR_WRITE | M.PFERR_USER | M.PFERR_FETCH)
    try:
        w = guest_walk(vcpu, addr, pfec)
    except paging_tmpl.WalkFault as f:
        inject_page_fault(vcpu, f.error_code, f.address)
    write = bool(error_code & M.PFERR_WRITE)
    gfn = w.gfn
    slot = kvm.memslots.lookup(gfn)
    if error_code & M.PFERR_PRESENT and write and shadow.is_write_tracked(gfn):
        # page_fault_handle_page_track: a write to a write-protected guest page table.
        shadow.clear_flood(root, addr)
        kvm.stats["pf_emulate"] += 1
        return RetPF.EMULATE
    pfn = kvm.host.hva_to_pfn(slot.gfn_to_hva(gfn)) if slot is not None else 0
    host_writable = slot is not None and not slot.flags & 2            # KVM_MEM_READONLY
    base = vcpu.mmu.cpu_role & 0xFFFF_FFFF
    if (write and not w.pte_access & ACC_WRITE and not base & R.ROLE_CR0_WP
            and not error_code & M.PFERR_USER and slot is not None):
        # Guest CR0.WP=0: a supervisor write to a read-only page is allowed; the SPTE
        # becomes a writable kernel page (and NX with SMEP) (kvm-mmu-spec 6.4).
        w.pte_access = (w.pte_access | ACC_WRITE) & ~ACC_USER
        if vcpu.mmu.cpu_role >> 32 & R.EXT_CR4_SMEP:
            w.pte_access &= ~ACC_EXEC
    shadow.make_mmu_pages_available()
    ret = shadow.fetch(vcpu, root, addr, w, slot, pfn, write, host_writable)
    _count_outcome(kvm, ret)
    return ret


def kvm_mmu_invlpg(vcpu, gva: int) -> None:
    """An INVLPG exit: INVVPID for the address, then sync its SPTE in every unsync page on
    its path, in the current and the previous roots (kvm_mmu_invalidate_addr)."""
    vcpu.kvm.stats["invlpg"] += 1          # kvm_mmu_invlpg counts a non-canonical one too
    if not canonical(gva):
        return
    vcpu.flush_tlb_gva(gva)
    shadow = vcpu.kvm.shadow
    if shadow is None:
        return
    mmu = vcpu.mmu
    shadow.invalidate_addr(vcpu, gva, mmu.root.sp)
    for info in mmu.prev_roots:
        shadow.invalidate_addr(vcpu, gva, info.sp)


def kvm_mmu_new_pgd(vcpu, new_pgd: int) -> None:
    """A CR3 change: fast_pgd_switch over prev_roots; a miss leaves the root invalid and
    kvm_mmu_reload finds (or builds) the new one by (gfn, role) in the hash."""
    kvm = vcpu.kvm
    mmu = vcpu.mmu
    hit = M.fast_pgd_switch(mmu, new_pgd, mmu.root_role, lambda mask: kvm_mmu_free_roots(vcpu, mask))
    kvm.stats["kvmdbg_pgd_switch_hits" if hit else "kvmdbg_pgd_switch_misses"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:fast_pgd_switch", vcpu.index, pgd=new_pgd, hit=hit,
                  root=mmu.root.sp.number if mmu.root.sp is not None else 0)
    if not hit:
        return
    vcpu.make_request(KVM_REQ_LOAD_MMU_PGD)
    if not mmu.root_role & R.ROLE_DIRECT:
        mmu.root.sp.write_flooding_count = 0


def kvm_invalidate_pcid(vcpu, pcid: int) -> None:
    cpu = vcpu.cpu
    mmu = vcpu.mmu
    if vcpu.kvm.profile.tdp_enabled:
        vcpu.make_request(KVM_REQ_TLB_FLUSH_GUEST)
        return
    pcide = bool(cpu.cr4 & CR4_PCIDE)
    if (cpu.cr3 & 0xFFF if pcide else 0) == pcid:
        vcpu.make_request(KVM_REQ_MMU_SYNC)
        vcpu.make_request(KVM_REQ_TLB_FLUSH_CURRENT)
    if not pcide:
        return
    mask = 0
    for i, info in enumerate(mmu.prev_roots):
        if info.sp is not None and info.pgd & 0xFFF == pcid:
            mask |= M.KVM_MMU_ROOT_PREVIOUS(i)
    kvm_mmu_free_roots(vcpu, mask)


def kvm_set_cr3(vcpu, cr3: int) -> None:
    """kvm_set_cr3 (a MOV to CR3 exit under shadow paging; kvm-mmu-spec 2.5)."""
    cpu = vcpu.cpu
    skip_flush = False
    pcid = 0
    if cpu.cr4 & CR4_PCIDE:
        skip_flush = bool(cr3 >> 63)
        cr3 &= ~(1 << 63)
        pcid = cr3 & 0xFFF
    if cr3 != cpu.cr3:
        cr3 = system.check_cr3(cpu, cr3)
        kvm_mmu_new_pgd(vcpu, cr3)
        cpu.set_cr3(cr3)
    if not skip_flush:
        kvm_invalidate_pcid(vcpu, pcid)


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
    if cr4 & CR4_PKE and not vcpu.kvm.profile.tdp_enabled:
        raise GuestFault(GP, 0)                 # no PKU in the guest's CPUID without TDP
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
    cpu.set_efer(new)
    if (old ^ new) & (EFER_NXE | EFER_LME):
        kvm_mmu_reset_context(vcpu)


def rflags_ac(vcpu) -> bool:
    return bool(vcpu.cpu.get_rflags() & AC)


__all__ = ["kvm_set_cr0", "kvm_set_cr4", "kvm_set_efer", "kvm_post_set_cr4", "kvm_post_set_cr0",
           "kvm_init_mmu", "kvm_mmu_reset_context", "kvm_mmu_load", "kvm_mmu_reload",
           "kvm_mmu_unload", "kvm_mmu_free_roots", "kvm_mmu_free_obsolete_roots",
           "kvm_mmu_page_fault", "GP", "GuestFault"]
