"""The local APIC's MSR side (mirrors arch/x86/kvm/lapic.c): IA32_APICBASE and, in x2APIC
mode, the registers as MSRs 0x800-0x8ff.

The register page itself is the PC machine's LocalApic device (kvm/devices.py), which
reads the vCPU's apic_base to know whether it answers.
"""

from __future__ import annotations

from kvmdbg.arch.msr_index import (APIC_BASE_MSR, APIC_DEFAULT_PHYS_BASE, MSR_IA32_APICBASE_BSP,
                                   MSR_IA32_APICBASE_ENABLE, X2APIC_ENABLE)
from kvmdbg.bits import mask
from kvmdbg.cpu.regs import MAXPHYADDR

# kvm_apic_set_base: bits 0-7 and 9, and every bit at or above MAXPHYADDR, are reserved
# (kvm_vcpu_reserved_gpa_bits_raw | 0x2ff); EXTD without x2APIC in CPUID is too.
APIC_BASE_RSVD = mask(63, MAXPHYADDR) | 0x2FF

LAPIC_MODE_DISABLED = 0
LAPIC_MODE_INVALID = X2APIC_ENABLE
LAPIC_MODE_XAPIC = MSR_IA32_APICBASE_ENABLE
LAPIC_MODE_X2APIC = MSR_IA32_APICBASE_ENABLE | X2APIC_ENABLE


def kvm_apic_mode(value: int) -> int:
    return value & (MSR_IA32_APICBASE_ENABLE | X2APIC_ENABLE)


def kvm_lapic_reset(vcpu) -> None:
    """kvm_lapic_reset (not an INIT): enabled at the default base; BSP on vCPU 0."""
    vcpu.apic_base = (APIC_DEFAULT_PHYS_BASE | MSR_IA32_APICBASE_ENABLE
                      | (MSR_IA32_APICBASE_BSP if vcpu.index == 0 else 0))


def kvm_set_apic_base(vcpu, value: int) -> bool:
    """WRMSR IA32_APICBASE from the guest (kvm_set_apic_base, v6.12); False is #GP. SDM
    Vol. 3A 11.12.5's state changes: x2APIC -> xAPIC and disabled -> x2APIC are refused, EXTD alone is invalid.

    Moving the base is accepted and read back, but the PC machine's xAPIC page stays at
    0xfee00000 (LocalApic.mmio is fixed): KVM would move it (apic_mmio_in_range uses the
    new base_address); here the old page keeps answering and the new address is plain
    memory or unmodelled MMIO."""
    rsvd = APIC_BASE_RSVD | (0 if "x2apic" in vcpu.cpu.features else X2APIC_ENABLE)
    old, new = kvm_apic_mode(vcpu.apic_base), kvm_apic_mode(value)
    if value & rsvd or new == LAPIC_MODE_INVALID:
        return False
    if old == LAPIC_MODE_X2APIC and new == LAPIC_MODE_XAPIC:
        return False
    if old == LAPIC_MODE_DISABLED and new == LAPIC_MODE_X2APIC:
        return False
    vcpu.apic_base = value
    apic = _lapic(vcpu)
    if apic is not None and old != new:
        if new == LAPIC_MODE_X2APIC:
            apic.set_x2apic_id(vcpu)
        elif new == LAPIC_MODE_XAPIC:
            apic.set_xapic_id(vcpu)
    return True


def _lapic(vcpu):
    """The machine's local APIC device, or None (the raw machine has none)."""
    return next((d for d in vcpu.kvm.devices if d.name == "lapic"), None)


def kvm_x2apic_msr_read(vcpu, index: int):
    """RDMSR 0x800-0x8ff: None (#GP) unless the APIC is in x2APIC mode."""
    apic = _lapic(vcpu)
    if apic is None or not apic_x2apic_mode(vcpu):
        return None
    return apic.x2apic_msr_read(vcpu, (index - APIC_BASE_MSR) << 4)


def kvm_x2apic_msr_write(vcpu, index: int, value: int) -> bool:
    apic = _lapic(vcpu)
    if apic is None or not apic_x2apic_mode(vcpu):
        return False
    return apic.x2apic_msr_write(vcpu, (index - APIC_BASE_MSR) << 4, value)


def kvm_apic_hw_enabled(vcpu) -> bool:
    return bool(vcpu.apic_base & MSR_IA32_APICBASE_ENABLE)


def apic_x2apic_mode(vcpu) -> bool:
    return bool(vcpu.apic_base & X2APIC_ENABLE)
