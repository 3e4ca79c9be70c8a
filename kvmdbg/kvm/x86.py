"""KVM's generic x86 side (mirrors arch/x86/kvm/x86.c).

kvm_set_cr0/cr3/cr4 with kvm_post_set_cr0/cr4 (kvm-mmu-spec 2.3-2.5; each era's
behaviour is a small policy object the VM picks when it is built), EFER,
kvm_invalidate_pcid, and the local TLB flushes of vcpu_enter_guest's request servicing
(2.6). The MMU context itself (kvm_init_mmu, kvm_mmu_reset_context, kvm_mmu_load,
kvm_mmu_page_fault, ...) is in kvmdbg/mmu/mmu.py, as in the kernel.
"""

from __future__ import annotations

from kvmdbg.arch.kvm_host import (KVM_REQ_LOAD_MMU_PGD, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,  # noqa: F401
                                  KVM_REQ_MMU_RELOAD, KVM_REQ_MMU_SYNC, KVM_REQ_SMI,
                                  KVM_REQ_TLB_FLUSH, KVM_REQ_TLB_FLUSH_CURRENT,
                                  KVM_REQ_TLB_FLUSH_GUEST)
from kvmdbg.arch.msr_index import (APIC_BASE_MSR, MSR_IA32_APICBASE, MSR_IA32_MISC_ENABLE,
                                   MSR_IA32_MISC_ENABLE_EMON, MSR_IA32_MISC_ENABLE_PMU_RO_MASK)
from kvmdbg.arch.pgtable_types import PAE_PDPT_ADDR_MASK, PAE_PDPTE_RSVD, PAGE_PRESENT
from kvmdbg.bits import UNPACK_FROM, canonical
from kvmdbg.cpu import system
from kvmdbg.cpu.faults import GP, GuestFault
from kvmdbg.cpu.regs import (CR0_PDPTR_BITS, CR0_PG, CR0_WP, CR4_PAE, CR4_PCIDE, CR4_PDPTR_BITS,
                             CR4_PGE, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE)
from kvmdbg.kvm import lapic
from kvmdbg.mmu import mmu as M

CR0_ROLE_BITS = M.KVM_MMU_CR0_ROLE_BITS


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
    M.kvm_mmu_sync_roots(vcpu)                  # nothing to sync in a direct MMU
    M.kvm_mmu_sync_prev_roots(vcpu)
    vcpu.flush_tlb_guest()


def kvm_service_local_tlb_flush_requests(vcpu) -> None:
    reqs = vcpu.requests
    if KVM_REQ_TLB_FLUSH_CURRENT in reqs:
        reqs.discard(KVM_REQ_TLB_FLUSH_CURRENT)
        kvm_vcpu_flush_tlb_current(vcpu)
    if KVM_REQ_TLB_FLUSH_GUEST in reqs:
        reqs.discard(KVM_REQ_TLB_FLUSH_GUEST)
        kvm_vcpu_flush_tlb_guest(vcpu)


def kvm_invalidate_pcid(vcpu, pcid: int) -> None:
    cpu = vcpu.cpu
    mmu = vcpu.mmu
    if mmu.ops.direct:
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
    M.kvm_mmu_free_roots(vcpu, mask)


def is_pae_paging(vcpu) -> bool:
    """is_pae_paging (x86.h): paging on, CR4.PAE, not long mode."""
    cpu = vcpu.cpu
    return system.pae_paging(cpu.cr0, cpu.cr4, cpu.efer)


def load_pdptrs(vcpu, cr3: int) -> bool:
    """load_pdptrs (x86.c): the four PDPTEs at CR3[31:5], read from guest memory through the
    memslots; False (the caller injects #GP) if the table is in no memslot or a present
    PDPTE sets a reserved bit (rsvd_bits_mask[0][2] of a PAE guest: 63:MAXPHYADDR, 8:5,
    2:1). Shadow paging frees the current root when they changed (its PAE roots were
    built from them); then KVM_REQ_LOAD_MMU_PGD, and with EPT the values go to the VMCS
    (GUEST_PDPTRn), whose PDPTE registers the next VM entry loads."""
    kvm = vcpu.kvm
    gpa = cr3 & PAE_PDPT_ADDR_MASK
    if kvm.memslots.lookup(gpa >> 12) is None:
        return False
    data = kvm.read_gpa(gpa, 32)
    pdpte = tuple(UNPACK_FROM[8](data, 8 * i)[0] for i in range(4))
    if any(e & PAGE_PRESENT and e & PAE_PDPTE_RSVD for e in pdpte):
        return False
    mmu = vcpu.mmu
    if not mmu.ops.direct and pdpte != mmu.pdptrs:
        M.kvm_mmu_free_roots(vcpu, M.KVM_MMU_ROOT_CURRENT)
    mmu.pdptrs = pdpte
    vcpu.make_request(KVM_REQ_LOAD_MMU_PGD)
    vcpu.cpu.set_pdptes(pdpte)                  # GUEST_PDPTRn, loaded by the VM entry
    return True


def kvm_handle_invpcid(vcpu, kind: int, pcid: int, gla: int) -> None:
    """kvm_handle_invpcid (x86.c): the descriptor's checks, then the invalidation the type
    asks for; KVM keeps no global SPTEs, so type 3 (all non-global) flushes like type 2."""
    cpu = vcpu.cpu
    pcide = bool(cpu.cr4 & CR4_PCIDE)
    if pcid >> 12 or kind > 3:
        raise GuestFault(GP, 0)
    if kind == 0:                                   # INVPCID_TYPE_INDIV_ADDR
        if (not pcide and pcid) or not canonical(gla):
            raise GuestFault(GP, 0)
        M.kvm_mmu_invpcid_gva(vcpu, gla, pcid)
    elif kind == 1:                                 # INVPCID_TYPE_SINGLE_CTXT
        if not pcide and pcid:
            raise GuestFault(GP, 0)
        kvm_invalidate_pcid(vcpu, pcid)
    else:                                           # ALL_NON_GLOBAL, ALL_INCL_GLOBAL
        vcpu.make_request(KVM_REQ_TLB_FLUSH_GUEST)


def kvm_set_cr3(vcpu, cr3: int) -> None:
    """kvm_set_cr3 (a MOV to CR3 exit under shadow paging; kvm-mmu-spec 2.5). A PAE guest
    reloads its PDPTEs even when CR3 does not change."""
    cpu = vcpu.cpu
    skip_flush = False
    pcid = 0
    if cpu.cr4 & CR4_PCIDE:
        skip_flush = bool(cr3 >> 63)
        cr3 &= ~(1 << 63)
        pcid = cr3 & 0xFFF
    if cr3 != cpu.cr3 or is_pae_paging(vcpu):
        cr3 = system.check_cr3(cpu, cr3)
        if is_pae_paging(vcpu) and not load_pdptrs(vcpu, cr3):
            raise GuestFault(GP, 0)
        if cr3 != cpu.cr3:
            M.kvm_mmu_new_pgd(vcpu, cr3)
            cpu.set_cr3(cr3)
    if not skip_flush:
        kvm_invalidate_pcid(vcpu, pcid)


# --- control registers (x86.c) ---

def kvm_set_cr0(vcpu, cr0: int) -> None:
    cpu = vcpu.cpu
    old = cpu.cr0
    system.check_cr0(cpu, cr0)                 # kvm_is_valid_cr0 and the long-mode rules
    if (not cpu.efer & EFER_LME and cr0 & CR0_PG and cpu.cr4 & CR4_PAE
            and (cr0 ^ old) & CR0_PDPTR_BITS and not load_pdptrs(vcpu, cpu.cr3)):
        raise GuestFault(GP, 0)
    vcpu.write_cr0(cr0)                         # vmx_set_cr0
    kvm_post_set_cr0(vcpu, old, cpu.cr0)


def kvm_post_set_cr0(vcpu, old: int, new: int) -> None:
    """kvm_post_set_cr0; what a WP-only change does is the VM's policy (01b31714bd90)."""
    d = old ^ new
    if d == CR0_WP and vcpu.kvm.policies.post_set_cr0_wp(vcpu, new):
        return
    if d & CR0_PG and not new & CR0_PG:
        vcpu.make_request(KVM_REQ_TLB_FLUSH_GUEST)
    if d & CR0_ROLE_BITS:
        M.kvm_mmu_reset_context(vcpu)


class Cr0WpResets:
    """<= v6.3: a WP-only CR0 change is an ordinary role change (reset, unload)."""

    def __call__(self, vcpu, new: int) -> bool:
        return False


class Cr0WpReinitsOnly:
    """01b31714bd90 (v6.4): with paging on and TDP, a WP-only change only re-inits the MMU
    (the root role ignores WP, so the root stays); with paging off nothing is done."""

    def __call__(self, vcpu, new: int) -> bool:
        if not new & CR0_PG:
            return True
        if vcpu.mmu.ops.direct:
            M.kvm_init_mmu(vcpu)
            return True
        return False


def kvm_set_cr4(vcpu, cr4: int) -> None:
    cpu = vcpu.cpu
    old = cpu.cr4
    # kvm_is_valid_cr4: the CPU's cr4_reserved_bits come from the guest's CPUID
    # (Vcpu.set_cpuid), so PKE without PKU (hidden without TDP) is #GP here too.
    system.check_cr4(cpu, cr4)
    if (not cpu.efer & EFER_LMA and cpu.cr0 & CR0_PG and cr4 & CR4_PAE
            and (cr4 ^ old) & CR4_PDPTR_BITS and not load_pdptrs(vcpu, cpu.cr3)):
        raise GuestFault(GP, 0)
    vcpu.write_cr4(cr4)                         # vmx_set_cr4: GUEST_CR4 and the read shadow
    vcpu.kvm.policies.post_set_cr4(vcpu, old, cr4)


# kvm_post_set_cr4, one class per era (kvm-mmu-spec 2.3), chosen when the VM is built.

class PostSetCr4PreLai:
    """<= v5.15 (before f4bc051fc91a): PGE is an MMU role bit, and a PCIDE 1->0 change
    resets the MMU too; the TLB flush is the reset's."""

    def __call__(self, vcpu, old: int, new: int) -> None:
        if (old ^ new) & M.KVM_MMU_CR4_ROLE_BITS_PRE_LAI or (old & CR4_PCIDE and not new & CR4_PCIDE):
            M.kvm_mmu_reset_context(vcpu)


class PostSetCr4Split:
    """f4bc051fc91a (v5.16): role bits reset the MMU; TLB flushes are requested apart."""

    def __call__(self, vcpu, old: int, new: int) -> None:
        d = old ^ new
        if d & M.KVM_MMU_CR4_ROLE_BITS:
            M.kvm_mmu_reset_context(vcpu)
        if not vcpu.mmu.ops.direct and not old & CR4_PCIDE and new & CR4_PCIDE:
            M.kvm_mmu_unload(vcpu)
        if d & CR4_PGE or (old & CR4_PCIDE and not new & CR4_PCIDE):
            vcpu.make_request(KVM_REQ_TLB_FLUSH_GUEST)
        elif d & CR4_PAE or (new & CR4_SMEP and not old & CR4_SMEP):
            vcpu.make_request(KVM_REQ_TLB_FLUSH_CURRENT)


class PostSetCr4Skipped:
    """The thread's RFC patch with the TDP MMU on: kvm_set_cr4 returns before
    kvm_post_set_cr4, so nothing is reset or flushed (fast, and wrong: cpu_role goes
    stale, see programs/smap_mmio.S)."""

    def __call__(self, vcpu, old: int, new: int) -> None:
        pass


def kvm_post_set_cr4(vcpu, old: int, new: int) -> None:
    vcpu.kvm.policies.post_set_cr4(vcpu, old, new)


def kvm_set_efer(vcpu, efer: int) -> None:
    cpu = vcpu.cpu
    old = cpu.efer
    new = system.check_efer(cpu, efer)
    cpu.set_efer(new)
    if (old ^ new) & (EFER_NXE | EFER_LME):
        M.kvm_mmu_reset_context(vcpu)


# --- MSRs that are KVM's, not the processor's (kvm_get_msr_common / kvm_set_msr_common) ---

def kvm_vcpu_reset_msrs(vcpu) -> None:
    """kvm_vcpu_reset's MSR values: the APIC base (kvm_lapic_reset) and MISC_ENABLE."""
    lapic.kvm_lapic_reset(vcpu)
    vcpu.ia32_misc_enable_msr = MSR_IA32_MISC_ENABLE_PMU_RO_MASK


def kvm_get_msr_common(vcpu, index: int):
    """The MSR's value, or None: not an MSR KVM has (#GP)."""
    if index == MSR_IA32_APICBASE:
        return vcpu.apic_base
    if index == MSR_IA32_MISC_ENABLE:
        return vcpu.ia32_misc_enable_msr
    if APIC_BASE_MSR <= index <= APIC_BASE_MSR + 0xFF:
        return lapic.kvm_x2apic_msr_read(vcpu, index)
    return None


def kvm_set_msr_common(vcpu, index: int, value: int) -> bool:
    """A guest WRMSR; False is #GP (an unknown MSR, or a value KVM refuses)."""
    if index == MSR_IA32_APICBASE:
        return lapic.kvm_set_apic_base(vcpu, value)
    if index == MSR_IA32_MISC_ENABLE:
        old = vcpu.ia32_misc_enable_msr
        if (old ^ value) & MSR_IA32_MISC_ENABLE_PMU_RO_MASK:
            return False                    # read-only bits
        # EMON is read-only but writes to it are ignored, not faulted.
        value = (value & ~MSR_IA32_MISC_ENABLE_EMON) | (old & MSR_IA32_MISC_ENABLE_EMON)
        vcpu.ia32_misc_enable_msr = value
        return True
    if APIC_BASE_MSR <= index <= APIC_BASE_MSR + 0xFF:
        return lapic.kvm_x2apic_msr_write(vcpu, index, value)
    return False
