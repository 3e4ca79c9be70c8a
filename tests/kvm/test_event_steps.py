"""Events are stamped with the step count at the moment they happen: the number of
instructions retired before the instruction that caused them (what a stop line calls the
step, gdb's instruction count). The run loop adds a block's instructions to the count only
when the block returns, so an exit in the middle of a block must still see the exact count:
here an OUT after three instructions exits at step 3 and the HLT after it at step 4."""

from __future__ import annotations

import pytest

from kvmdbg.kvm.scheduler import run_vm
from tests.helpers import machine

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
