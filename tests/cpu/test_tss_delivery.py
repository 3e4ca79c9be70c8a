"""The 64-bit TSS on delivery, software interrupts, and returns across privilege levels.

Oracles: SDM Vol. 3A 6.12.1 (gate DPL check for INT n), 6.13 (error codes: EXT, IDT bit),
6.14.2 (the frame is 16-byte aligned; SS:RSP always pushed), 6.14.4 (a privilege change
takes RSP<CPL> from the TSS and loads a null SS with RPL = new CPL), 6.14.5 (an IST gate
takes ISTn whatever the CPL), 8.2.4 and Vol. 2A LTR (the descriptor becomes busy; LTR of a
busy TSS is #GP(selector)), Vol. 2A INT n (#TS(TSS selector + EXT) for a stack beyond the
TSS limit; a gate's CS must be a 64-bit code segment), IRET and RET (far) (pop SS:RSP on a
return to an outer level; DS/ES/FS/GS the new CPL may not use get a null selector).
Frames and records are read back from guest memory; nothing reads kvmdbg's own state.
"""

from __future__ import annotations

import pytest

from kvmdbg.cpu.executor import HALTED, run
from tests.cpu.guest_idt import (IDT_BASE, LIDT_INSN, REC, frame, gate, install, load_idtr,
                                 program, q, set_tss_ist, set_tss_rsp0)
from tests.helpers import machine

UD, TS, NP, GP, PF = 6, 10, 11, 13, 14
P, RW, US = 1, 2, 4
KERNEL_CS, KERNEL_SS, USER_CS, USER_SS = 0x08, 0x10, 0x1B, 0x23
USER_CODE, USER_STACK = 0x140000, 0x150000
USER_RSP = USER_STACK + 0x800
USER_DATA = USER_STACK            # the user program's own stores (below USER_RSP)
BOOT_RSP = 0x80000
GDT2, GDTR2 = 0x30000, 0x2FFF0    # a test's own GDT (copy of the contract's + TSS entries)
TSS2 = 0x31000

# A handler that records its RSP, SS and CS at entry, then halts.
WATCH = f"""
    mov qword ptr [{REC:#x}], rsp
    xor eax, eax
    mov ax, ss
    mov qword ptr [{REC + 8:#x}], rax
    mov ax, cs
    mov qword ptr [{REC + 16:#x}], rax
    hlt
"""


# IRETQ to USER_CODE at CPL 3 with IF set.
TO_USER = f"""
    push {USER_SS}
    push {USER_RSP:#x}
    push 0x202
    push {USER_CS}
    push {USER_CODE:#x}
    iretq
"""


def put(vm, gpa: int, value: int) -> None:
    vm.write_gpa(gpa, value.to_bytes(8, "little"))


def watched(vm):
    """(RSP, SS, CS) the WATCH handler saw."""
    return q(vm, REC), q(vm, REC + 8), q(vm, REC + 16)


def to_user(user: str, gates=()):
    """Boot, load the IDT, IRETQ to `user` at CPL 3 (CS 0x1b, SS 0x23 of the contract's
    GDT). gates: (vector, dict of gate() arguments) whose handler is WATCH."""
    kernel, _ = program(LIDT_INSN + TO_USER)
    vm, cpu = machine(kernel)
    for vector, args in gates:
        install(vm, vector, WATCH, **args)
    load_idtr(vm)
    map_user(vm, user)
    return vm, cpu


def map_user(vm, user: str) -> None:
    """Make USER_CODE and USER_STACK user pages and put `user` at USER_CODE."""
    for gpa in (0x1000, 0x2000, 0x3000):              # the boot PML4E, PDPTE and PDE
        put(vm, gpa, q(vm, gpa) | US)
    for page in (USER_CODE, USER_STACK):
        put(vm, 0x4000 + (page >> 12) * 8, page | P | RW | US)
    vm.write_gpa(USER_CODE, program(user, address=USER_CODE)[0])


# --- RSP0 and IST ---


def test_cpl3_to_cpl0_takes_rsp0_aligned_and_a_null_ss():
    vm, cpu = to_user("ud2", [(UD, {})])
    set_tss_rsp0(vm, cpu, 0x70008)                     # not 16-byte aligned
    assert run(cpu, 1000) == HALTED
    rsp, ss, cs = watched(vm)
    assert rsp == 0x70000 - 5 * 8                      # aligned down, then 5 words (no code)
    assert (ss, cs) == (0, KERNEL_CS)                  # null SS with RPL 0
    f = frame(vm, rsp, False)
    assert (f["rip"], f["cs"], f["rsp"], f["ss"]) == (USER_CODE, USER_CS, USER_RSP, USER_SS)


def test_ist_at_cpl0_switches_stack_and_keeps_ss():
    kernel, (_, ud) = program(LIDT_INSN, "ud2")
    vm, cpu = machine(kernel)
    install(vm, UD, WATCH, ist=1)
    load_idtr(vm)
    set_tss_ist(vm, cpu, 1, 0x60008)
    assert run(cpu, 1000) == HALTED
    rsp, ss, cs = watched(vm)
    assert rsp == 0x60000 - 5 * 8 and (ss, cs) == (KERNEL_SS, KERNEL_CS)
    f = frame(vm, rsp, False)
    assert (f["rip"], f["cs"], f["rsp"], f["ss"]) == (ud, KERNEL_CS, BOOT_RSP, KERNEL_SS)


def test_ist_from_cpl3_wins_over_rsp0():
    vm, cpu = to_user("ud2", [(UD, {"ist": 7})])
    set_tss_rsp0(vm, cpu, 0x70000)
    set_tss_ist(vm, cpu, 7, 0x68000)
    assert run(cpu, 1000) == HALTED
    rsp, ss, _ = watched(vm)
    assert rsp == 0x68000 - 5 * 8 and ss == 0
    assert frame(vm, rsp, False)["rsp"] == USER_RSP


def _own_gdt(vm, tss_limit: int = 0x67, extra: bytes = b"") -> str:
    """A GDT at GDT2: the contract's five entries, an available TSS at 0x28 (base TSS2,
    tss_limit), then `extra`; returns the LGDT instruction."""
    from kvmdbg.kvm.boot import GDT
    entries = vm.read_gpa(GDT, 5 * 8)
    lo = ((tss_limit & 0xFFFF) | (TSS2 & 0xFFFFFF) << 16 | 0x89 << 40
          | (tss_limit >> 16 & 0xF) << 48)
    table = entries + lo.to_bytes(8, "little") + bytes(8) + extra
    vm.write_gpa(GDT2, table)
    vm.write_gpa(GDTR2, (len(table) - 1).to_bytes(2, "little") + GDT2.to_bytes(8, "little"))
    return f"lgdt [{GDTR2:#x}]"


def test_ist_beyond_the_tss_limit_is_ts_with_the_tss_selector_and_ext():
    kernel = LIDT_INSN + "\n{lgdt}\nmov ax, 0x28\nltr ax\n"
    vm, cpu = machine(b"\x90")
    lgdt = _own_gdt(vm, tss_limit=0x0B)               # holds RSP0, not IST1 (0x24)
    code, (_, ud) = program(kernel.format(lgdt=lgdt), "ud2")
    vm.write_gpa(0x100000, code)
    install(vm, UD, WATCH, ist=1)
    install(vm, TS, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    rsp, _, _ = watched(vm)
    assert rsp == BOOT_RSP - 6 * 8                     # #TS on the current stack
    f = frame(vm, rsp, True)
    assert (f["error_code"], f["rip"]) == (0x28 | 1, ud)


def test_gate_to_a_data_segment_is_gp_with_its_selector_and_ext():
    kernel, (_, ud) = program(LIDT_INSN, "ud2")
    vm, cpu = machine(kernel)
    install(vm, UD, WATCH, selector=KERNEL_SS)
    install(vm, GP, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    rsp, _, _ = watched(vm)
    f = frame(vm, rsp, True)
    assert (f["error_code"], f["rip"]) == (KERNEL_SS | 1, ud)


# --- INT n ---


def test_int_n_through_a_dpl0_gate_from_cpl3_is_gp_at_the_instruction():
    vm, cpu = to_user("int 0x80", [(0x80, {}), (GP, {})])
    set_tss_rsp0(vm, cpu, 0x70000)
    assert run(cpu, 1000) == HALTED
    rsp, _, _ = watched(vm)
    assert rsp == 0x70000 - 6 * 8
    f = frame(vm, rsp, True)
    # IDT bit (2), EXT clear (a software interrupt), index 0x80; RIP at the INT.
    assert (f["error_code"], f["rip"], f["cs"]) == (0x80 * 8 + 2, USER_CODE, USER_CS)


@pytest.mark.parametrize("vector", [0x80, PF])
def test_int_n_through_a_dpl3_gate_is_a_trap_without_error_code(vector):
    vm, cpu = to_user(f"int {vector}", [(vector, {"dpl": 3})])
    set_tss_rsp0(vm, cpu, 0x70000)
    assert run(cpu, 1000) == HALTED
    rsp, _, _ = watched(vm)
    assert rsp == 0x70000 - 5 * 8                     # no error code, even for #PF's vector
    f = frame(vm, rsp, False)
    assert (f["rip"], f["cs"], f["ss"]) == (USER_CODE + 2, USER_CS, USER_SS)


# --- returns across privilege levels ---


def test_iretq_to_cpl3_and_back():
    user = f"""
        int 0x80
        xor eax, eax
        mov ax, cs
        mov qword ptr [{USER_DATA:#x}], rax
        mov ax, ss
        mov qword ptr [{USER_DATA + 8:#x}], rax
        mov ax, ds
        mov qword ptr [{USER_DATA + 16:#x}], rax
        mov qword ptr [{USER_DATA + 24:#x}], rsp
        ud2
    """
    vm, cpu = to_user(user, [(UD, {})])
    install(vm, 0x80, "iretq", dpl=3)
    vm.write_gpa(USER_DATA, bytes(32))
    set_tss_rsp0(vm, cpu, 0x70000)
    assert run(cpu, 1000) == HALTED
    # Back at CPL 3 with the frame's CS and SS; DS (DPL 0 data) was nulled by the first
    # IRETQ to CPL 3.
    assert [q(vm, USER_DATA + 8 * i) for i in range(4)] == [USER_CS, USER_SS, 0, USER_RSP]
    rsp, _, _ = watched(vm)
    assert rsp == 0x70000 - 5 * 8 and frame(vm, rsp, False)["cs"] == USER_CS


def test_iretq_to_cpl3_with_a_dpl0_stack_segment_is_gp():
    kernel, (_, bad) = program(LIDT_INSN, f"""
        push {KERNEL_SS}
        push {USER_RSP:#x}
        push 0x202
        push {USER_CS}
        push {USER_CODE:#x}
        iretq
    """)
    vm, cpu = machine(kernel)
    install(vm, GP, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    rsp, _, _ = watched(vm)
    f = frame(vm, rsp, True)
    assert (f["error_code"], f["rip"]) == (KERNEL_SS, bad + 19)   # the IRETQ (after 5 pushes)


@pytest.mark.parametrize("release", [0, 16])
def test_lretq_to_an_outer_level_pops_ss_rsp(release):
    junk = "\n".join("push 0x5a5a" for _ in range(release // 8))
    kernel = LIDT_INSN + f"""
        push {USER_SS}
        push {USER_RSP:#x}
        {junk}
        push {USER_CS}
        push {USER_CODE:#x}
        retfq {release}
    """
    vm, cpu = machine(program(kernel)[0])
    install(vm, UD, WATCH)
    load_idtr(vm)
    map_user(vm, "ud2")
    set_tss_rsp0(vm, cpu, 0x70000)
    assert run(cpu, 1000) == HALTED
    rsp, _, _ = watched(vm)
    f = frame(vm, rsp, False)
    # RET far adds the immediate to the new RSP too (SDM Vol. 2A RET).
    assert (f["rip"], f["cs"], f["rsp"], f["ss"]) == (USER_CODE, USER_CS, USER_RSP + release,
                                                      USER_SS)


def test_lretq_at_the_same_level_keeps_ss():
    kernel, _ = program(LIDT_INSN + f"""
        lea rax, [rip + back]
        push {KERNEL_CS}
        push rax
        retfq
        ud2
    back:
        mov qword ptr [{REC:#x}], rsp
        xor eax, eax
        mov ax, ss
        mov qword ptr [{REC + 8:#x}], rax
        hlt
    """)
    vm, cpu = machine(kernel)
    install(vm, UD, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    assert (q(vm, REC), q(vm, REC + 8)) == (BOOT_RSP, KERNEL_SS)


CODE32 = 0x00CF9A000000FFFF        # flat 32-bit code, DPL 0 (SDM Vol. 3A 3.4.5: L = 0, D = 1)


def test_iretq_to_compatibility_mode_and_delivery_from_it():
    """IRETQ may return to a 32-bit code segment in IA-32e mode; an exception there is
    delivered through the 64-bit IDT with SS:RSP pushed (SDM Vol. 3A 6.14.1-6.14.2)."""
    vm, cpu = machine(b"\x90")
    lgdt = _own_gdt(vm, extra=CODE32.to_bytes(8, "little"))      # selector 0x38
    compat = 0x110000
    vm.write_gpa(compat, bytes.fromhex("b811110000" "0f0b"))     # mov eax, 0x1111; ud2
    vm.write_gpa(0x100000, program(lgdt + "\n" + LIDT_INSN + f"""
        mov rax, rsp
        push {KERNEL_SS}
        push rax
        push 0x2
        push 0x38
        push {compat:#x}
        iretq
    """)[0])
    install(vm, UD, WATCH)
    load_idtr(vm)
    assert run(cpu, 1000) == HALTED
    rsp, _, cs = watched(vm)
    f = frame(vm, rsp, False)
    assert (f["rip"], f["cs"], f["ss"], f["rsp"]) == (compat + 5, 0x38, KERNEL_SS, BOOT_RSP)
    assert cs == KERNEL_CS and rsp == BOOT_RSP - 5 * 8


def test_far_call_through_memory_and_lretq_at_the_same_level():
    """CALL m16:64 (REX.W FF /3) pushes CS and RIP; RETFQ pops them (SDM Vol. 2A CALL, RET)."""
    kernel, _ = program(f"""
        lea rax, [rip + target]
        mov qword ptr [{REC + 0x40:#x}], rax
        mov word ptr [{REC + 0x48:#x}], {KERNEL_CS}
        .byte 0x48, 0xff, 0x1c, 0x25                   # call m16:64 (REX.W FF /3), abs32
        .long {REC + 0x40:#x}
        mov qword ptr [{REC + 0x18:#x}], rsp
        hlt
    target:
        mov rax, qword ptr [rsp]
        mov qword ptr [{REC:#x}], rax
        mov rax, qword ptr [rsp + 8]
        mov qword ptr [{REC + 8:#x}], rax
        mov qword ptr [{REC + 0x10:#x}], rsp
        retfq
    """)
    vm, cpu = machine(kernel)
    assert run(cpu, 1000) == HALTED
    ret, cs, inside, after = (q(vm, REC + 8 * i) for i in range(4))
    assert cs == KERNEL_CS and inside == BOOT_RSP - 16 and after == BOOT_RSP
    assert vm.read_gpa(ret, 2) == bytes.fromhex("4889")     # returns to the mov after it


def test_delivery_outside_ia32e_mode_stops_with_one_line():
    from kvmdbg.cpu.regs import CR0_ET, CR0_PE
    from kvmdbg.cpu.segments import from_descriptor
    from kvmdbg.errors import UnsupportedMode
    vm, cpu = machine(b"\x0f\x0b")                    # ud2
    cpu.set_cr0(CR0_PE | CR0_ET)                       # 32-bit protected mode, no paging
    cpu.set_efer(0)
    cpu.load_cs(from_descriptor(0x08, CODE32))
    with pytest.raises(UnsupportedMode, match="outside IA-32e mode"):
        run(cpu, 10)


@pytest.mark.parametrize("kvm", ["v6.12", "shadow"])
def test_int_n_whose_delivery_exits_is_delivered_once(kvm):
    """Under the KVM model the first delivery exits (the IDT, GDT and stack pages are not in
    EPT or the shadow tables yet); the guest still sees one INT: one frame, RIP after it."""
    kernel, (_, after) = program(LIDT_INSN + "\nint 0x80", "hlt")
    vm, cpu = machine(kernel, kvm=kvm)
    install(vm, 0x80, WATCH)
    load_idtr(vm)
    from kvmdbg.kvm.scheduler import run_vm
    run_vm(vm, 10_000)
    rsp, ss, cs = watched(vm)
    assert rsp == BOOT_RSP - 5 * 8 and (ss, cs) == (KERNEL_SS, KERNEL_CS)
    assert frame(vm, rsp, False)["rip"] == after


# --- implicit accesses grant nothing to explicit ones ---


def test_a_cpl3_descriptor_load_that_sets_the_accessed_bit_opens_no_user_write_to_the_gdt():
    """Loading DS at CPL 3 sets the descriptor's accessed bit: an implicit supervisor-mode
    write to the GDT (SDM Vol. 3A 3.4.5, 6.x; 4.6.1: implicit accesses are supervisor
    accesses). A user-mode write to the same supervisor page must still fault (#PF with
    P, W and U set, SDM 4.7) and leave the GDT as it was."""
    vm, cpu = machine(b"\x90")
    from kvmdbg.kvm.boot import GDT
    raw = int.from_bytes(vm.read_gpa(GDT + 0x20, 8), "little")   # the contract's user data
    user_data = 0x38                   # a copy after _own_gdt's TSS (0x28, 16 bytes), not accessed
    lgdt = _own_gdt(vm, extra=(raw & ~(1 << 40)).to_bytes(8, "little"))
    code, _ = program(LIDT_INSN + "\n" + lgdt + "\n" + TO_USER)
    vm.write_gpa(0x100000, code)
    install(vm, PF, WATCH)
    load_idtr(vm)
    map_user(vm, f"mov ax, {user_data | 3}\nmov ds, ax\n"
                 f"mov qword ptr [{GDT2:#x}], rax\nud2")
    set_tss_rsp0(vm, cpu, 0x70000)
    before = vm.read_gpa(GDT2, 8)
    assert run(cpu, 1000) == HALTED
    assert vm.read_gpa(GDT2 + user_data + 5, 1)[0] & 1           # the load set it
    rsp, _, _ = watched(vm)
    f = frame(vm, rsp, True)
    assert f["error_code"] == P | RW | US and cpu.cr2 == GDT2
    assert vm.read_gpa(GDT2, 8) == before
