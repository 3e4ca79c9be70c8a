"""LTR, STR, LLDT, SLDT, SGDT and SIDT.

Oracles: unicorn (QEMU's TCG) for the bytes and registers SGDT/SIDT/STR/SLDT store; the
SDM for LTR (Vol. 2A LTR: #GP(0) at CPL > 0 or for a null selector, #GP(selector) for a
selector beyond the GDT, in the LDT or not naming an available TSS, #NP(selector) if not
present; the descriptor becomes busy; Vol. 3A 8.2.4) and for the TSS it loads (its RSP0 is
used on the next privilege change, Vol. 3A 6.14.4).
"""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as U

from kvmdbg.cpu.executor import HALTED, run
from kvmdbg.errors import UnsupportedMode
from tests.cpu.guest_idt import LIDT_INSN, REC, frame, install, load_idtr, program, q
from tests.cpu.test_tss_delivery import (GDT2, GP, NP, TO_USER, TSS2, UD, USER_CODE, WATCH,
                                         _own_gdt, map_user, to_user, watched)
from tests.helpers import asm, machine

OUT = 0x30800          # where the probe stores (inside the test GDT's page, past the table)

PROBE = f"""
    sgdt [{OUT:#x}]
    sidt [{OUT + 0x10:#x}]
    str rax
    mov [{OUT + 0x20:#x}], rax
    mov rbx, -1
    sldt rbx
    mov [{OUT + 0x28:#x}], rbx
    str word ptr [{OUT + 0x30:#x}]
    mov ecx, 0xffffffff
    str ecx
    mov [{OUT + 0x38:#x}], rcx
    hlt
"""


def unicorn_probe(gdtr, idtr, tr) -> bytes:
    """What PROBE stores on QEMU with these GDTR/IDTR (base, limit) and TR selector."""
    code = asm(PROBE, 0x100000)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x100000, 0x1000)
    uc.mem_map(OUT & ~0xFFF, 0x1000)
    uc.mem_write(0x100000, code)
    uc.mem_write(OUT, b"\xcc" * 0x40)
    uc.reg_write(U.UC_X86_REG_GDTR, (0, gdtr[0], gdtr[1], 0))
    uc.reg_write(U.UC_X86_REG_IDTR, (0, idtr[0], idtr[1], 0))
    uc.reg_write(U.UC_X86_REG_TR, (tr, 0x600, 0x67, 0x8B))
    uc.emu_start(0x100000, 0x100000 + len(code) - 1)       # up to the HLT
    return bytes(uc.mem_read(OUT, 0x40))


def test_sgdt_sidt_str_sldt_match_unicorn():
    vm, cpu = machine(program(LIDT_INSN, PROBE)[0])
    load_idtr(vm, limit=0x7FF)
    vm.write_gpa(OUT, b"\xcc" * 0x40)
    assert run(cpu, 1000) == HALTED
    # The boot contract's GDT (0x500, five entries and one TSS) and TR (0x28).
    assert vm.read_gpa(OUT, 0x40) == unicorn_probe((0x500, 0x37), (0x20000, 0x7FF), 0x28)


def test_ltr_marks_the_tss_busy_and_loading_it_again_is_gp():
    vm, cpu = machine(b"\x90")
    lgdt = _own_gdt(vm)
    code, (_, first, again) = program(LIDT_INSN, f"""
        {lgdt}
        mov ax, 0x28
        ltr ax
        str word ptr [{REC + 0x20:#x}]
    """, "ltr ax")
    vm.write_gpa(0x100000, code)
    install(vm, GP, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    assert vm.read_gpa(GDT2 + 0x28 + 5, 1) == b"\x8b"       # type 9 (available) -> B (busy)
    assert q(vm, REC + 0x20) & 0xFFFF == 0x28
    f = frame(vm, watched(vm)[0], True)
    assert (f["error_code"], f["rip"]) == (0x28, again)


NOT_PRESENT_TSS = (0x67 | (TSS2 & 0xFFFFFF) << 16 | 0x09 << 40).to_bytes(8, "little") + bytes(8)


@pytest.mark.parametrize("selector, vector, code", [
    (0x38, NP, 0x38),      # a TSS descriptor with P = 0
    (0x10, GP, 0x10),      # a data segment
    (0x2C, GP, 0x2C),      # TI = 1: the LDT
    (0x48, GP, 0x48),      # beyond the GDT limit
    (0x03, GP, 0),         # null
])
def test_ltr_faults(selector, vector, code):
    vm, cpu = machine(b"\x90")
    lgdt = _own_gdt(vm, extra=NOT_PRESENT_TSS)
    prog, (_, bad) = program(LIDT_INSN + f"\n{lgdt}\nmov ax, {selector:#x}", "ltr ax")
    vm.write_gpa(0x100000, prog)
    install(vm, vector, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    f = frame(vm, watched(vm)[0], True)
    assert (f["error_code"], f["rip"]) == (code, bad)
    assert vm.read_gpa(GDT2 + 0x28 + 5, 1) == b"\x89"       # nothing became busy


def test_ltr_and_lldt_at_cpl3_are_gp0():
    for insn in ("ltr ax", "lldt ax"):
        vm, cpu = to_user(f"mov ax, 0x28\n{insn}", [(GP, {})])
        assert run(cpu, 1000) == HALTED
        f = frame(vm, watched(vm)[0], True)
        assert (f["error_code"], f["rip"]) == (0, USER_CODE + 4)


def test_a_loaded_tss_gives_the_stack_for_the_next_privilege_change():
    vm, cpu = machine(b"\x90")
    lgdt = _own_gdt(vm)
    vm.write_gpa(TSS2 + 4, (0x6C000).to_bytes(8, "little"))       # RSP0
    vm.write_gpa(0x100000, program(f"{lgdt}\nmov ax, 0x28\nltr ax\n" + LIDT_INSN + TO_USER)[0])
    install(vm, UD, WATCH)
    load_idtr(vm)
    map_user(vm, "ud2")
    assert run(cpu, 1000) == HALTED
    assert watched(vm)[0] == 0x6C000 - 5 * 8


def test_lldt_null_is_accepted_and_a_real_ldt_stops_with_one_line():
    vm, cpu = machine(program(f"""
        xor eax, eax
        lldt ax
        mov rbx, -1
        sldt rbx
        mov [{REC:#x}], rbx
        mov ax, 0x10
        lldt ax
    """)[0])
    with pytest.raises(UnsupportedMode, match="local descriptor table"):
        run(cpu, 1000)
    assert q(vm, REC) == 0



def test_far_transfer_to_a_non_flat_32_bit_code_segment_stops_with_one_line():
    """kvmdbg applies no CS base or limit in 32-bit code (cpu/segments.py), so a far
    transfer from 64-bit code into a 32-bit code segment with base 0x1000 must stop the run
    instead of running at the wrong addresses: the check is the target's code size, not
    the current one."""
    from kvmdbg.cpu import segments
    from kvmdbg.errors import UnsupportedMode
    from kvmdbg.kvm.boot import GDT
    from tests.helpers import machine
    vm, cpu = machine("hlt")
    non_flat_code32 = 0x00CF9A001000FFFF                 # base 0x1000, D=1, L=0, DPL 0
    base, limit = cpu.gdtr
    slot = (limit + 1) // 8
    vm.write_gpa(GDT + slot * 8, non_flat_code32.to_bytes(8, "little"))
    cpu.gdtr = (base, limit + 8)
    assert cpu.code_bits == 64
    with pytest.raises(UnsupportedMode, match="base 0x1000"):
        segments.far_code_segment(cpu, slot * 8)
