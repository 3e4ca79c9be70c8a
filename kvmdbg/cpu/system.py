"""Architectural system state changes: MOV to CRn, EFER, MSRs, INVLPG, INVPCID, SGDT/SIDT.

The validity checks follow the SDM (and, where KVM is stricter, kvm_is_valid_cr0 /
kvm_is_valid_cr4, so the same guest behaves alike bare and under the model).
The TLB invalidations follow SDM Vol. 3A 4.10.4.1 rule by rule.
"""

from __future__ import annotations

from kvmdbg.arch.desc_defs import SEG_L
from kvmdbg.arch.pgtable_types import PAE_PDPT_ADDR_MASK, PAE_PDPTE_RSVD, PAGE_PRESENT
from kvmdbg.bits import M32, M64, UNPACK_FROM, canonical, mask
from kvmdbg.cpu.faults import GP, GuestFault
from kvmdbg.cpu.regs import (CR0_CD, CR0_ET, CR0_NW, CR0_PDPTR_BITS, CR0_PE, CR0_PG, CR4_LA57,
                             CR4_PAE, CR4_PCIDE, CR4_PDPTR_BITS, CR4_PGE, CR4_PKE, CR4_SMAP,
                             CR4_SMEP, EFER_LMA,
                             EFER_LME, EFER_NXE, EFER_SCE, MAXPHYADDR, MSR_EFER, MSR_FS_BASE,
                             MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_PAT, MSR_TSC, MSR_TSC_AUX)

CR0_VALID = M32                     # bits 63:32 reserved (#GP); 31:0 reserved bits are ignored
# CR4 bits the CPU model implements: the architectural ones up to OSXMMEXCPT, plus PCIDE,
# SMEP, SMAP and PKE when CPUID reports their features (cr4_reserved_bits). The rest (UMIP,
# LA57, VMXE, SMXE, FSGSBASE, OSXSAVE, ...) are always reserved: #GP, as in KVM's
# kvm_is_valid_cr4 with a CPUID that lacks them.
CR4_VALID = 0x7FF | CR4_PCIDE | CR4_SMEP | CR4_SMAP | CR4_PKE
EFER_VALID = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
# CR4 and EFER bits that are reserved unless CPUID reports the feature (KVM's
# __cr4_reserved_bits and __kvm_valid_efer; SDM Vol. 3A 2.5 and 2.2.1).
_CR4_FEATURE_BITS = {"pcid": CR4_PCIDE, "smep": CR4_SMEP, "smap": CR4_SMAP, "pku": CR4_PKE}
_EFER_FEATURE_BITS = {"nx": EFER_NXE}
CR3_RSVD = mask(62, MAXPHYADDR)     # bit 63 is the PCID no-flush hint, never stored
_U64 = UNPACK_FROM[8]


def _reserved_bits(valid: int, feature_bits: dict, features) -> int:
    """Bits outside `valid`, and those whose feature CPUID lacks."""
    rsvd = ~valid & M64
    for name, bit in feature_bits.items():
        if name not in features:
            rsvd |= bit
    return rsvd


def cr4_reserved_bits(features) -> int:
    """__cr4_reserved_bits(guest_cpuid_has, vcpu): CR4 bits a MOV to CR4 may not set."""
    return _reserved_bits(CR4_VALID, _CR4_FEATURE_BITS, features)


def efer_reserved_bits(features) -> int:
    """EFER bits WRMSR may not set: efer_reserved_bits plus __kvm_valid_efer's CPUID checks."""
    return _reserved_bits(EFER_VALID, _EFER_FEATURE_BITS, features)


def set_features(cpu, features) -> None:
    """The CPU's CPUID features, set by whoever builds it (KVM: KVM_SET_CPUID2, then
    kvm_vcpu_after_set_cpuid). The reserved-bit masks are computed here, once, so no
    instruction consults CPUID; instructions that need a feature test cpu.features."""
    cpu.features = frozenset(features)
    cpu.cr4_reserved_bits = cr4_reserved_bits(cpu.features)
    cpu.efer_reserved_bits = efer_reserved_bits(cpu.features)


def long_mode(cpu) -> bool:
    return bool(cpu.efer & EFER_LMA)


def check_cr0(cpu, value: int) -> None:
    if value & ~CR0_VALID:
        raise GuestFault(GP, 0)
    if value & CR0_NW and not value & CR0_CD:
        raise GuestFault(GP, 0)
    if value & CR0_PG and not value & CR0_PE:
        raise GuestFault(GP, 0)
    if value & CR0_PG and not cpu.cr0 & CR0_PG and cpu.efer & EFER_LME:
        # Activating IA-32e mode needs PAE, and is refused from a 64-bit code segment
        # (SDM Vol. 3A 10.8.5; KVM's kvm_set_cr0 checks both too).
        if not cpu.cr4 & CR4_PAE or cpu.seg_cache["cs"].attr & SEG_L:
            raise GuestFault(GP, 0)
    if not value & CR0_PG and (cpu.code_bits == 64 or cpu.cr4 & CR4_PCIDE):
        # Paging goes off only from compatibility mode (leaving IA-32e mode) or outside it.
        raise GuestFault(GP, 0)


def check_cr4(cpu, value: int) -> None:
    if value & cpu.cr4_reserved_bits:
        raise GuestFault(GP, 0)
    old = cpu.cr4
    lma = cpu.efer & EFER_LMA
    if lma:
        if not value & CR4_PAE:
            raise GuestFault(GP, 0)
        if (old ^ value) & CR4_LA57:
            raise GuestFault(GP, 0)
    if value & CR4_PCIDE and not old & CR4_PCIDE:
        if cpu.cr3 & 0xFFF or not lma:
            raise GuestFault(GP, 0)


def check_cr3(cpu, value: int) -> int:
    """The value to store (bit 63 stripped when PCIDs are on)."""
    if cpu.cr4 & CR4_PCIDE:
        value &= ~(1 << 63)
    if value & CR3_RSVD or value >> 63:
        raise GuestFault(GP, 0)
    return value


def check_efer(cpu, value: int) -> int:
    if value & cpu.efer_reserved_bits:
        raise GuestFault(GP, 0)
    if (value ^ cpu.efer) & EFER_LME and cpu.cr0 & CR0_PG:
        raise GuestFault(GP, 0)
    return (value & ~EFER_LMA) | (cpu.efer & EFER_LMA)   # LMA is read-only to software


def efer_after_cr0(cpu, old: int, new: int) -> int:
    """EFER with LMA as the processor sets it when CR0.PG changes with EFER.LME set:
    turning paging on activates IA-32e mode, turning it off leaves it (SDM Vol. 3A 10.8.5,
    10.8.6; under VMX, KVM's vmx_set_cr0 does it with enter_lmode / exit_lmode)."""
    efer = cpu.efer
    if efer & EFER_LME:
        if new & CR0_PG and not old & CR0_PG:
            return efer | EFER_LMA
        if old & CR0_PG and not new & CR0_PG:
            return efer & ~EFER_LMA
    return efer


# --- the PDPTE registers of PAE paging (SDM Vol. 3A 4.4.1) ---

def pae_paging(cr0: int, cr4: int, efer: int) -> bool:
    """PAE paging is in use: CR0.PG and CR4.PAE outside IA-32e mode (SDM 4.4)."""
    return bool(cr0 & CR0_PG and cr4 & CR4_PAE and not efer & EFER_LMA)


def read_pdptes(cpu, cr3: int) -> tuple:
    """The four PDPTEs of the 32-byte table at CR3[31:5] (Table 4-7), read by guest-physical
    address as the walker reads tables (through EPT under a hypervisor). #GP(0) if a present
    one sets a reserved bit (Table 4-8), raised before the MOV has any effect."""
    ops = cpu.ops
    gpa = cr3 & PAE_PDPT_ADDR_MASK
    page, _hpa, _w, _x = ops.translate_gpa(gpa, 0, True)      # 0: a read (walker.READ)
    if page is None:
        pdptes = tuple(ops.mmio_read(gpa + 8 * i, 8) for i in range(4))
    else:
        pdptes = tuple(_U64(page, (gpa & 0xFFF) + 8 * i)[0] for i in range(4))
    for e in pdptes:
        if e & PAGE_PRESENT and e & PAE_PDPTE_RSVD:
            raise GuestFault(GP, 0)
    return pdptes


def pdptes_for_cr0(cpu, old: int, new: int):
    """What a MOV to CR0 loads into the PDPTE registers, or None: it changes CD, NW or PG
    and PAE paging is in use after it (EFER.LME clear: LMA will follow LME)."""
    if ((old ^ new) & CR0_PDPTR_BITS and new & CR0_PG and cpu.cr4 & CR4_PAE
            and not cpu.efer & EFER_LME):
        return read_pdptes(cpu, cpu.cr3)
    return None


def pdptes_for_cr4(cpu, old: int, new: int):
    """What a MOV to CR4 loads: it changes PAE, PGE, PSE or SMEP and PAE paging is in use
    after it (SMAP and PKE are not in the SDM's list)."""
    if (old ^ new) & CR4_PDPTR_BITS and pae_paging(cpu.cr0, new, cpu.efer):
        return read_pdptes(cpu, cpu.cr3)
    return None


def pdptes_for_cr3(cpu, cr3: int):
    """What a MOV to CR3 loads: every MOV to CR3 while PAE paging is in use, even of the
    same value (so software reloads changed PDPTEs that way)."""
    if pae_paging(cpu.cr0, cpu.cr4, cpu.efer):
        return read_pdptes(cpu, cr3)
    return None


def load_pdptes(cpu, pdptes) -> None:
    """Commit what a pdptes_for_* returned, once the MOV has stored its register."""
    if pdptes is not None:
        cpu.set_pdptes(pdptes)


def cr0_flush(cpu, old: int, new: int) -> None:
    """MOV to CR0 clearing PG invalidates everything (SDM 4.10.4.1). Setting PG drops the
    entries the model made while paging was off: a processor caches none (TLBs hold only
    translations by paging, SDM 4.10.2, 4.10.2.3), and kept they would outlive a MOV to CR0
    that enters 32-bit paging with no flush in between."""
    if (old ^ new) & CR0_PG:
        cpu.tlb.flush_vpid(cpu.vpid)


def cr3_flush(cpu, value: int) -> None:
    """MOV to CR3: non-global entries of the (new) PCID, unless bit 63 says not to."""
    if cpu.cr4 & CR4_PCIDE:
        if value >> 63:
            return
        cpu.tlb.flush_pcid(cpu.vpid, value & 0xFFF)
    else:
        cpu.tlb.flush_pcid(cpu.vpid, 0)


def cr4_flush(cpu, old: int, new: int) -> None:
    d = old ^ new
    if d & CR4_PGE or (old & CR4_PCIDE and not new & CR4_PCIDE):
        cpu.tlb.flush_vpid(cpu.vpid)                        # everything, globals too
    elif d & CR4_PAE or (new & CR4_SMEP and not old & CR4_SMEP):
        pcid = old & CR4_PCIDE and cpu.cr3 & 0xFFF
        cpu.tlb.flush_pcid(cpu.vpid, pcid or 0, include_global=True)


def arch_set_cr(cpu, n: int, value: int) -> None:
    """MOV to CRn as bare hardware does it: check, store, invalidate."""
    if n == 0:
        check_cr0(cpu, value)
        old = cpu.cr0
        pdptes = pdptes_for_cr0(cpu, old, value | CR0_ET)
        cpu.set_cr0(value | CR0_ET)
        cpu.set_efer(efer_after_cr0(cpu, old, cpu.cr0))
        load_pdptes(cpu, pdptes)
        cr0_flush(cpu, old, cpu.cr0)
    elif n == 3:
        stored = check_cr3(cpu, value)
        pdptes = pdptes_for_cr3(cpu, stored)
        cpu.set_cr3(stored)
        load_pdptes(cpu, pdptes)
        cr3_flush(cpu, value)
    elif n == 4:
        check_cr4(cpu, value)
        old = cpu.cr4
        pdptes = pdptes_for_cr4(cpu, old, value)
        cpu.set_cr4(value)
        load_pdptes(cpu, pdptes)
        cr4_flush(cpu, old, value)
    elif n == 8:
        if value & ~0xF:
            raise GuestFault(GP, 0)
        cpu.cr8 = value
    else:
        raise GuestFault(GP, 0)


def arch_set_efer(cpu, value: int) -> None:
    cpu.set_efer(check_efer(cpu, value))


def rdmsr(cpu, index: int) -> int:
    """RDMSR of the MSRs the processor holds; any other goes to cpu.ops.rdmsr (the
    hypervisor's or a device's, e.g. KVM's lapic for IA32_APICBASE): None there is #GP."""
    if index == MSR_EFER:
        return cpu.efer
    if index == MSR_PAT:
        return cpu.pat
    if index == MSR_FS_BASE:
        return cpu.fs_base
    if index == MSR_GS_BASE:
        return cpu.gs_base
    if index == MSR_KERNEL_GS_BASE:
        return cpu.kernel_gs_base
    if index == MSR_TSC_AUX:
        return cpu.tsc_aux
    if index == MSR_TSC:
        return cpu.cycles
    value = cpu.ops.rdmsr(cpu, index)
    if value is None:
        raise GuestFault(GP, 0)
    return value


def _pat_valid(value: int) -> bool:
    return all((value >> (8 * i)) & 0xFF in (0, 1, 4, 5, 6, 7) for i in range(8))


def wrmsr(cpu, index: int, value: int) -> None:
    """WRMSR; MSRs the processor does not hold go to cpu.ops.wrmsr (False there: #GP)."""
    if index == MSR_EFER:
        cpu.ops.set_efer(cpu, value)
    elif index == MSR_PAT:
        if not _pat_valid(value):
            raise GuestFault(GP, 0)
        cpu.pat = value
    elif index in (MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE):
        if not canonical(value):
            raise GuestFault(GP, 0)
        if index == MSR_FS_BASE:
            cpu.fs_base = value
        elif index == MSR_GS_BASE:
            cpu.gs_base = value
        else:
            cpu.kernel_gs_base = value
    elif index == MSR_TSC_AUX:
        if value >> 32:
            raise GuestFault(GP, 0)
        cpu.tsc_aux = value
    elif not cpu.ops.wrmsr(cpu, index, value):
        raise GuestFault(GP, 0)         # nobody's MSR, or its owner refused the value


def invlpg(cpu, va: int) -> None:
    """Entries for the page in the current PCID, and global entries for it."""
    if cpu.invlpg_exiting:
        cpu.ops.invlpg(cpu, va)         # a VM exit: the hypervisor invalidates (INVVPID)
        return
    if canonical(va):
        cpu.tlb.flush_page(cpu.vpid, cpu.pcid, va >> 12, True)


def invpcid(cpu, kind: int, desc_lo: int, desc_hi: int) -> None:
    if cpu.invlpg_exiting:
        # With "enable INVPCID" and INVLPG exiting (shadow paging) INVPCID exits (SDM Vol.
        # 3C 26.1.3): the hypervisor checks the descriptor and invalidates.
        cpu.ops.invpcid(cpu, kind, desc_lo, desc_hi)
        return
    pcid = desc_lo & 0xFFF
    if kind > 3 or desc_lo >> 12:
        raise GuestFault(GP, 0)
    if kind in (0, 1) and pcid and not cpu.cr4 & CR4_PCIDE:
        raise GuestFault(GP, 0)
    tlb = cpu.tlb
    if kind == 0:
        if not canonical(desc_hi):
            raise GuestFault(GP, 0)
        tlb.flush_page(cpu.vpid, pcid, desc_hi >> 12, False)
    elif kind == 1:
        tlb.flush_pcid(cpu.vpid, pcid)
    elif kind == 2:
        tlb.flush_vpid(cpu.vpid, include_global=True)
    else:
        tlb.flush_vpid(cpu.vpid, include_global=False)


def store_pseudo_descriptor(cpu, va: int, size: int, table: tuple[int, int], ss: bool) -> None:
    """SGDT/SIDT's store of (base, limit) as size bytes (limit first), one access: every
    page is translated before any byte is written, so a fault writes nothing."""
    if ss:
        cpu.write_check_ss(va, size)         # #SS(0) rather than #GP(0) through SS
    base, limit = table
    cpu._split_write(va, size, (limit & 0xFFFF) | (base & mask(size * 8 - 17, 0)) << 16)
