"""Architectural system state changes: MOV to CRn, EFER, MSRs, INVLPG, INVPCID, SGDT/SIDT.

The validity checks follow the SDM (and, where KVM is stricter, kvm_is_valid_cr0 /
kvm_is_valid_cr4, so the same guest behaves alike bare and under the model).
The TLB invalidations follow SDM Vol. 3A 4.10.4.1 rule by rule.
"""

from __future__ import annotations

from kvmdbg.bits import M32, canonical, mask
from kvmdbg.arch.desc_defs import SEG_L
from kvmdbg.cpu.faults import GP, GuestFault
from kvmdbg.cpu.regs import (CR0_CD, CR0_ET, CR0_NW, CR0_PE, CR0_PG, CR4_LA57, CR4_PAE,
                             CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_LMA,
                             EFER_LME, EFER_NXE, EFER_SCE, MAXPHYADDR, MSR_EFER, MSR_FS_BASE,
                             MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_PAT, MSR_TSC, MSR_TSC_AUX)

CR0_VALID = M32                     # bits 63:32 reserved (#GP); 31:0 reserved bits are ignored
# CR4 bits the guest may set: the architectural ones up to OSXMMEXCPT, plus the features
# the CPUID of design section 3 advertises (PCID, SMEP, SMAP, PKU). The rest (UMIP, LA57,
# VMXE, SMXE, FSGSBASE, OSXSAVE, ...) are reserved for this guest: #GP, as in KVM's
# kvm_is_valid_cr4 with that CPUID.
CR4_VALID = 0x7FF | CR4_PCIDE | CR4_SMEP | CR4_SMAP | CR4_PKE
EFER_VALID = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
CR3_RSVD = mask(62, MAXPHYADDR)     # bit 63 is the PCID no-flush hint, never stored


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
    if value & ~CR4_VALID:
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
    if value & ~EFER_VALID:
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


def cr0_flush(cpu, old: int, new: int) -> None:
    """MOV to CR0 clearing PG invalidates everything (SDM 4.10.4.1)."""
    if old & CR0_PG and not new & CR0_PG:
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
        cpu.set_cr0(value | CR0_ET)
        cpu.set_efer(efer_after_cr0(cpu, old, cpu.cr0))
        cr0_flush(cpu, old, cpu.cr0)
    elif n == 3:
        stored = check_cr3(cpu, value)
        cpu.set_cr3(stored)
        cr3_flush(cpu, value)
    elif n == 4:
        check_cr4(cpu, value)
        old = cpu.cr4
        cpu.set_cr4(value)
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
    raise GuestFault(GP, 0)


def _pat_valid(value: int) -> bool:
    return all((value >> (8 * i)) & 0xFF in (0, 1, 4, 5, 6, 7) for i in range(8))


def wrmsr(cpu, index: int, value: int) -> None:
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
    else:
        raise GuestFault(GP, 0)


def invlpg(cpu, va: int) -> None:
    """Entries for the page in the current PCID, and global entries for it."""
    if cpu.invlpg_exiting:
        cpu.ops.invlpg(cpu, va)         # a VM exit: the hypervisor invalidates (INVVPID)
        return
    if canonical(va):
        cpu.tlb.flush_page(cpu.vpid, cpu.pcid, va >> 12, True)


def invpcid(cpu, kind: int, desc_lo: int, desc_hi: int) -> None:
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
