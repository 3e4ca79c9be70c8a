"""kvm-unit-tests' three PCID configurations (x86/unittests.cfg: pcid-enabled
`-cpu qemu64,+pcid,+invpcid`, pcid-disabled `-cpu qemu64,-pcid,-invpcid`, pcid-asymmetric
`-cpu qemu64,-pcid,+invpcid`), checked the way x86/pcid.c checks them.

pcid.c's main() reads CPUID (X86_FEATURE_PCID: leaf 1 ECX bit 17; X86_FEATURE_INVPCID:
leaf 7 EBX bit 10) and runs test_pcid_enabled or test_pcid_disabled, then
test_invpcid_enabled(pcid_enabled) or test_invpcid_disabled. Each of their write_*_safe /
invpcid_safe steps is one guest run here, with the outcome pcid.c expects (0: no
exception; GP_VECTOR; UD_VECTOR). The images themselves need the 32-bit multiboot entry;
this replays their checks as 64-bit guest code until that lands.
"""

from __future__ import annotations

import pytest

from kvmdbg.kvm.scheduler import run_vm
from tests.cpu.guest_idt import LIDT_INSN, install_recorders, q, record
from tests.helpers import machine

UD, GP = 6, 13
PCIDE = 1 << 17
CR0_PG = 1 << 31
OUT, DESC = 0x23000, 0x23100

CONFIGS = {"pcid-enabled": "qemu64,+pcid,+invpcid",
           "pcid-disabled": "qemu64,-pcid,-invpcid",
           "pcid-asymmetric": "qemu64,-pcid,+invpcid"}
PROFILES = ["v6.12", "shadow", "v5.15"]

SET_PCIDE = f"mov rax, cr4; or rax, {PCIDE:#x}; mov cr4, rax"


def invpcid(kind: int, pcid: int) -> str:
    return f"mov qword ptr [{DESC:#x}], {pcid}; mov eax, {kind}; invpcid rax, [{DESC:#x}]"


# (name, guest code, pcid.c's expected vector or None)
PCID_ENABLED = [
    ("set CR4.PCIDE", SET_PCIDE, None),
    ("clear CR0.PG with PCIDE=1", f"{SET_PCIDE}; mov rax, cr0; btr rax, 31; mov cr0, rax", GP),
    ("set PCIDE with CR3[11:0] != 0", f"mov rax, cr3; or rax, 1; mov cr3, rax; {SET_PCIDE}", GP),
]
PCID_DISABLED = [("set CR4.PCIDE", SET_PCIDE, GP)]
INVPCID_ENABLED = [
    ("types 0-3, pcid 0, PCIDE=0", "; ".join(invpcid(k, 0) for k in range(4)), None),
    ("type 0, pcid 1, PCIDE=0", invpcid(0, 1), GP),
    ("type 1, pcid 1, PCIDE=0", invpcid(1, 1), GP),
]
INVPCID_WITH_PCIDE = [("type 2, pcid 10, PCIDE=1", f"{SET_PCIDE}; {invpcid(2, 10)}", None)]
INVPCID_DISABLED = [("type 2", invpcid(2, 0), UD)]


def run(body: str, cpu: str, kvm: str):
    vm, _ = machine(f"{LIDT_INSN}\n{body}\nhlt", kvm=kvm, cpu=cpu)
    install_recorders(vm, (UD, GP))
    run_vm(vm, 100_000)
    v = record(vm)["vector"]
    return None if v == 0xDEAD else v


def guest_cpuid_bits(cpu: str, kvm: str) -> tuple[bool, bool]:
    """this_cpu_has(X86_FEATURE_PCID), this_cpu_has(X86_FEATURE_INVPCID), read by the guest."""
    vm, _ = machine(f"""
        mov eax, 1; xor ecx, ecx; cpuid; mov [{OUT:#x}], ecx
        mov eax, 7; xor ecx, ecx; cpuid; mov [{OUT + 8:#x}], ebx
        hlt""", kvm=kvm, cpu=cpu)
    run_vm(vm, 1000)
    return bool(q(vm, OUT) >> 17 & 1), bool(q(vm, OUT + 8) >> 10 & 1)


def pcid_c_checks(pcid: bool, inv: bool):
    """The steps main() runs for this CPUID, in its order."""
    steps = list(PCID_ENABLED if pcid else PCID_DISABLED)
    if inv:
        steps += INVPCID_ENABLED + (INVPCID_WITH_PCIDE if pcid else [])
    else:
        steps += INVPCID_DISABLED
    return steps


@pytest.mark.parametrize("kvm", PROFILES)
@pytest.mark.parametrize("config", CONFIGS)
def test_pcid_c_configuration(config, kvm):
    cpu = CONFIGS[config]
    want = ("+pcid" in cpu, "+invpcid" in cpu)       # QEMU: +feature sets the CPUID bit
    assert guest_cpuid_bits(cpu, kvm) == want
    failed = [(name, got, expect) for name, body, expect in pcid_c_checks(*want)
              if (got := run(body, cpu, kvm)) != expect]
    assert not failed, failed

