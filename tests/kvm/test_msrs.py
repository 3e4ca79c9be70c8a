"""The MSRs kvm-unit-tests' lib touches beyond the processor's own: IA32_APICBASE (0x1b),
and IA32_MISC_ENABLE (0x1a0), run as guest RDMSR/WRMSR, bare and under KVM.

Oracles: SDM Vol. 3A 11.4.4 (IA32_APIC_BASE: BSP bit 8, x2APIC enable bit 10, APIC global
enable bit 11, base from bit 12; bits 0-7 and 9 and those at or above MAXPHYADDR
reserved) and 11.12.5 (x2APIC -> xAPIC and disabled -> x2APIC transitions are illegal: #GP;
EXTD = 1 with EN = 0 is invalid); KVM's kvm_lapic_reset (enabled at 0xfee00000, BSP on
vCPU 0) and kvm_set_apic_base (x86.c, v6.12: X2APIC_ENABLE reserved without X86_FEATURE_
X2APIC in the guest's CPUID); KVM's kvm_vcpu_reset and kvm_set_msr_common for MISC_ENABLE
(resets to BTS_UNAVAIL | PEBS_UNAVAIL, bits 11 and 12, which are read-only: #GP if a write
changes them; EMON, bit 7, ignores writes); SDM RDMSR/WRMSR (#GP(0) for an unimplemented
MSR).
"""

from __future__ import annotations

import pytest

from kvmdbg.kvm.scheduler import run_vm
from tests.cpu.guest_idt import LIDT_INSN, frame, install_recorders, q, record
from tests.helpers import machine

GP = 13
APICBASE, MISC_ENABLE = 0x1B, 0x1A0
OUT = 0x23000
ENVS = [None, "v6.12", "shadow"]


def msr_run(msr: int, writes, cpu=None, kvm=None, vcpus: int = 1):
    """WRMSR each value in turn, then RDMSR. (fault, value read): fault is (vector, error
    code) of the first exception, or None; the value is None after a fault."""
    body = [LIDT_INSN]
    for v in writes:
        body.append(f"mov ecx, {msr:#x}; mov eax, {v & 0xFFFF_FFFF:#x}; mov edx, {v >> 32:#x}; wrmsr")
    body.append(f"mov ecx, {msr:#x}; rdmsr; mov [{OUT:#x}], eax; mov [{OUT + 4:#x}], edx; hlt")
    vm, _ = machine("\n".join(body), kvm=kvm, cpu=cpu, vcpus=vcpus)
    install_recorders(vm, (GP,))
    vm.write_gpa(OUT, b"\xff" * 8)
    run_vm(vm, 100_000)
    r = record(vm)
    if r["vector"] != 0xDEAD:
        return (r["vector"], frame(vm, r["rsp"], True)["error_code"]), None
    return None, q(vm, OUT)


def maxphyaddr(vm) -> int:
    """CPUID.80000008H:EAX[7:0], as the guest would read it."""
    v = vm.vcpus[0]
    return v.cpuid(v.cpu, 0x8000_0008, 0)[0] & 0xFF


@pytest.mark.parametrize("kvm", ENVS)
def test_apic_base_after_reset(kvm):
    # kvm_lapic_reset: APIC_DEFAULT_PHYS_BASE | MSR_IA32_APICBASE_ENABLE | BSP (vCPU 0).
    assert msr_run(APICBASE, [], kvm=kvm) == (None, 0xFEE0_0900)


def test_apic_base_bsp_only_on_vcpu_0():
    vm, _ = machine("hlt", vcpus=2, kvm="v6.12")
    from kvmdbg.cpu import system
    assert system.rdmsr(vm.vcpus[1].cpu, APICBASE) == 0xFEE0_0800


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("cpu, writes, expect", [
    # disable, and enable again (disable_apic / reset_apic in lib/x86/apic.c)
    (None, [0xFEE0_0100, 0xFEE0_0900], (None, 0xFEE0_0900)),
    (None, [0xFEE0_0100], (None, 0xFEE0_0100)),
    # a reserved bit in 0-7 or 9
    (None, [0xFEE0_0901], ((GP, 0), None)),
    (None, [0xFEE0_0B00], ((GP, 0), None)),
    # x2APIC enable: only with x2apic in CPUID (enable_x2apic checks CPUID.1:ECX[21] first)
    (None, [0xFEE0_0D00], ((GP, 0), None)),
    ("max", [0xFEE0_0D00], (None, 0xFEE0_0D00)),
    # x2APIC -> xAPIC is illegal; x2APIC -> disabled is fine; disabled -> x2APIC is illegal
    ("max", [0xFEE0_0D00, 0xFEE0_0900], ((GP, 0), None)),
    ("max", [0xFEE0_0D00, 0xFEE0_0100], (None, 0xFEE0_0100)),
    ("max", [0xFEE0_0100, 0xFEE0_0500], ((GP, 0), None)),
    # EXTD without EN is the invalid state
    ("max", [0xFEE0_0500], ((GP, 0), None)),
    # the base may move (the PC machine's page does not follow it; kvm/lapic.py says so)
    (None, [0xFED0_0900], (None, 0xFED0_0900)),
])
def test_apic_base_writes(kvm, cpu, writes, expect):
    assert msr_run(APICBASE, writes, cpu=cpu, kvm=kvm) == expect


@pytest.mark.parametrize("kvm", ENVS)
def test_apic_base_above_maxphyaddr_is_reserved(kvm):
    vm, _ = machine("hlt", kvm=kvm)
    bit = 1 << maxphyaddr(vm)
    assert msr_run(APICBASE, [bit | 0xFEE0_0900], kvm=kvm) == ((GP, 0), None)
    assert msr_run(APICBASE, [(bit >> 1) | 0xFEE0_0900], kvm=kvm) == (None, (bit >> 1) | 0xFEE0_0900)


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("writes, expect", [
    ([], (None, 0x1800)),
    ([0x1800 | 0x80], (None, 0x1800)),            # EMON: the write is dropped, no fault
    ([0x1800 | 0x1], (None, 0x1801)),             # fast strings: read/write
    ([0x800], ((GP, 0), None)),                   # PEBS_UNAVAIL cleared: read-only
    ([0x1800 | 0x1, 0x0], ((GP, 0), None)),
])
def test_misc_enable(kvm, writes, expect):
    assert msr_run(MISC_ENABLE, writes, kvm=kvm) == expect


@pytest.mark.parametrize("kvm", ENVS)
def test_unknown_msr_is_still_gp(kvm):
    assert msr_run(0x1234_5678, [], kvm=kvm) == ((GP, 0), None)
    assert msr_run(0x1234_5678, [1], kvm=kvm) == ((GP, 0), None)


def test_disabled_apic_page_reads_all_ones():
    # KVM's apic_mmio_read with KVM_X86_QUIRK_LAPIC_MMIO_HOLE: a disabled or x2APIC-mode
    # APIC's page reads all ones and drops writes; enabled again, the registers are back.
    from kvmdbg.kvm.devices import LocalApic
    vm, _ = machine("hlt", kvm="v6.12", cpu="max")
    v = vm.vcpus[0]
    apic = LocalApic(vm, 1)
    spiv = 0xF0
    assert apic.read(v, spiv, 4) == 0xFF                 # SDM 11.4.7.1: SPIV resets to 0xff
    v.apic_base = 0xFEE0_0100                             # disabled
    apic.write(v, spiv, 4, 0x1FF)
    assert apic.read(v, spiv, 4) == 0xFFFF_FFFF
    v.apic_base = 0xFEE0_0900
    assert apic.read(v, spiv, 4) == 0xFF


# --- x2APIC mode: the APIC registers as MSRs 0x800 + offset / 16 (SDM 11.12.1) ---

def x2apic_vm(body: str, kvm: str, vcpus: int = 1):
    """A VM with the PC machine's local APIC, x2apic in CPUID, running body on each vCPU
    (RDI = its index); exceptions are recorded (the first one halts)."""
    from kvmdbg.kvm.machine import pc_devices
    vm, _ = machine(f"{LIDT_INSN}\n{body}\nhlt", kvm=kvm, cpu="max", vcpus=vcpus)
    vm.devices = pc_devices(vm)
    vm.vmm.attach(vm.devices)
    install_recorders(vm, (GP,))
    run_vm(vm, 100_000)
    return vm


ENABLE_X2APIC = "mov ecx, 0x1b; rdmsr; or eax, 0x400; wrmsr"      # lib/x86/apic.c enable_x2apic


@pytest.mark.parametrize("kvm", ["v6.12", "shadow"])
def test_x2apic_id_and_logical_id(kvm):
    # SDM 11.12.5.1 / 11.12.10.2: in x2APIC mode the ID register (MSR 0x802) holds the
    # 32-bit x2APIC ID (here the xAPIC ID, the vCPU index), and the LDR (MSR 0x80d) is
    # (x2APIC ID[19:4] << 16) | 1 << x2APIC ID[3:0]; lib/x86/apic.c's x2apic_id reads 0x802.
    vm = x2apic_vm(f"""
        {ENABLE_X2APIC}
        mov ecx, 0x802; rdmsr; mov [{OUT:#x} + rdi * 8], eax
        mov ecx, 0x80d; rdmsr; mov [{OUT + 0x10:#x} + rdi * 8], eax
    """, kvm, vcpus=2)
    assert record(vm)["vector"] == 0xDEAD
    assert [q(vm, OUT), q(vm, OUT + 8)] == [0, 1]
    assert [q(vm, OUT + 0x10), q(vm, OUT + 0x18)] == [1, 2]


@pytest.mark.parametrize("kvm", ["v6.12", "shadow"])
@pytest.mark.parametrize("body", [
    "mov ecx, 0x802; rdmsr",                                   # not in x2APIC mode
    f"{ENABLE_X2APIC}; mov ecx, 0x80e; xor eax, eax; xor edx, edx; wrmsr",   # DFR: xAPIC only
    f"{ENABLE_X2APIC}; mov ecx, 0x80e; rdmsr",
    f"{ENABLE_X2APIC}; mov ecx, 0x808; xor eax, eax; mov edx, 1; wrmsr",     # TPR bits 63:32
    f"{ENABLE_X2APIC}; mov ecx, 0x802; xor eax, eax; xor edx, edx; wrmsr",   # ID: read-only
])
def test_x2apic_msr_faults(kvm, body):
    # SDM 11.12.1.2: x2APIC MSRs #GP outside x2APIC mode, for registers x2APIC mode does
    # not have (DFR, table 11-6), for writes of read-only registers and of bits 63:32.
    vm = x2apic_vm(body, kvm)
    r = record(vm)
    assert (r["vector"], frame(vm, r["rsp"], True)["error_code"]) == (GP, 0)


def test_x2apic_tpr_round_trips():
    vm = x2apic_vm(f"""
        {ENABLE_X2APIC}
        mov ecx, 0x808; mov eax, 0x20; xor edx, edx; wrmsr
        rdmsr; mov [{OUT:#x}], eax
    """, "v6.12")
    assert record(vm)["vector"] == 0xDEAD and q(vm, OUT) == 0x20
