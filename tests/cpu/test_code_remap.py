"""Instruction fetch follows the current translation (SDM Vol. 3A 4.10.2: after MOV to CR3
the processor fetches through the new paging structures): the same linear code address
mapped to other bytes in another address space runs those bytes, even when handlers for
that address were compiled and cached under the first mapping."""

from kvmdbg.arch.pgtable_types import PAGE_PRESENT as P, PAGE_RW as RW
from kvmdbg.cpu.executor import HALTED, run
from tests.helpers import asm, machine

SHARED = 0x400000                 # the linear address both address spaces run code at
OTHER = 0x500000                  # where the second address space maps it
PT_OF_SHARED = 0x4000 + 2 * 0x1000    # boot contract: the 4 KiB table of the third 2 MiB
PML4_B, PDPT_B, PD_B, PT_B = 0x900000, 0x901000, 0x902000, 0x903000


def routine(value: int, address: int) -> bytes:
    """jmp to +0x10 (a block of its own), then rbx = value; ret (a second block)."""
    head = asm(f"jmp {address + 0x10:#x}", address)
    return head + bytes(0x10 - len(head)) + asm(f"mov rbx, {value}\nret", address + 0x10)


def second_address_space(vm) -> None:
    """A copy of the boot contract's tables in which SHARED maps to OTHER."""
    q = lambda gpa: int.from_bytes(vm.read_gpa(gpa, 8), "little")
    vm.write_gpa(PML4_B, (PDPT_B | P | RW).to_bytes(8, "little"))
    vm.write_gpa(PDPT_B, (PD_B | P | RW).to_bytes(8, "little"))
    vm.write_gpa(PD_B, vm.read_gpa(0x3000, 4096))
    vm.write_gpa(PD_B + 2 * 8, (PT_B | P | RW).to_bytes(8, "little"))
    vm.write_gpa(PT_B, vm.read_gpa(PT_OF_SHARED, 4096))
    vm.write_gpa(PT_B, (OTHER | (q(PT_OF_SHARED) & 0xFFF)).to_bytes(8, "little"))


def test_same_code_address_in_two_address_spaces_runs_each_ones_code():
    vm, cpu = machine(f"""
        call {SHARED:#x}
        mov r12, rbx
        mov rax, {PML4_B:#x}
        mov cr3, rax
        call {SHARED:#x}
        hlt
    """)
    vm.write_gpa(SHARED, routine(1, SHARED))
    vm.write_gpa(OTHER, routine(2, SHARED))
    second_address_space(vm)
    assert run(cpu, 1000) == HALTED
    assert cpu.r[12] == 1            # the first address space's routine
    assert cpu.r[3] == 2             # the second's, at the same linear addresses
