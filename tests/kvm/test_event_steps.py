"""Events are stamped with the step count at the moment they happen: the number of
instructions retired before the instruction that caused them (what a stop line calls the
step, gdb's instruction count). The run loop adds a block's instructions to the count only
when the block returns, so an exit in the middle of a block must still see the exact count:
here an OUT after three instructions exits at step 3 and the HLT after it at step 4."""

from __future__ import annotations

import pytest

from kvmdbg.kvm.scheduler import run_vm
from tests.helpers import machine, run_program

PROGRAM = """
    mov rax, 1
    mov rbx, 2
    mov dx, 0xe9
    out dx, al
    cpuid
    mov rcx, 0x1b
    rdmsr
    mov rax, cr4
    xor rax, 0x100000
    mov cr4, rax
    hlt
"""
# instructions retired before each exiting instruction, counted in PROGRAM's text
EXPECTED = [("IO_INSTRUCTION", 3), ("CPUID", 4), ("MSR_READ", 6), ("CR_ACCESS", 9), ("HLT", 10)]


@pytest.mark.parametrize("kvm", ["v6.12", "shadow"])
def test_exits_in_the_middle_of_a_block_carry_the_exact_step(kvm):
    vm, cpu = machine(PROGRAM, kvm=kvm)
    vm.bus.set_keep(1000)
    run_vm(vm, 1000)
    exits = [(e.fields["exit_reason"], e.step) for e in vm.bus.log
             if e.name == "kvm_exit" and e.fields["exit_reason"] not in ("EPT_VIOLATION", "EXCEPTION_NMI")]
    assert exits == EXPECTED
    assert cpu.steps == 11 and cpu.halted


def test_the_emulator_translates_once_per_page():
    """KVM's emulator fetches the instruction and reads or writes its operand through
    gva_to_gpa once per page they touch (__do_insn_fetch_bytes and the emulator's
    read/write helpers loop over page-sized pieces): programs/smap_mmio.S's MMIO store is a
    dword on one page, so each emulation walks the guest tables twice, once for the
    fetch and once for the store (under EPT only the emulator walks them)."""
    vm = run_program("smap_mmio", "v6.12", events=True)
    names = [e.name for e in vm.bus.log]
    emulations = names.count("kvm_emulate_insn")
    assert emulations >= 1
    assert names.count("kvm_mmu_pagetable_walk") == 2 * emulations
