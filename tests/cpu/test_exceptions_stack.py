"""Non-canonical addresses through the stack segment are #SS(0), not #GP(0).

SDM Vol. 3A 6.15 (Interrupt 12) and the 64-bit-mode exception lists of PUSH, POP, PUSHF,
POPF, CALL, RET and IRET: a memory reference through SS whose address is non-canonical
raises #SS(0); through any other segment it raises #GP(0). The stack segment is used by
the implicit stack accesses and by memory operands whose base register is RSP or RBP
(SDM Vol. 1 3.7.5) unless an FS or GS override names another segment; the CS, DS, ES
and SS override prefixes are ignored in 64-bit mode (AMD APM Vol. 3 1.2.4). #SS is a
fault with an error code and a contributory exception (SDM Vol. 3A Tables 6-1, 6-5).

Expected values come from those rules; frames and records are read back from guest memory.
Most cases run at CPL 3, so the exception is delivered on the CPL-0 stack even when RSP
itself is non-canonical.
"""

from __future__ import annotations

import pytest

from kvmdbg.cpu.executor import run
from tests.cpu.guest_idt import (IDT_BASE, LIDT_INSN, frame, install_recorders, load_idtr,
                                 program, q, record, set_tss_rsp0)
from tests.helpers import machine

NP, DF, SS, GP, UD = 11, 8, 12, 13, 6
P, RW, US = 1, 2, 4
RF = 0x10000
NC = 0x8000_0000_4000_0000        # bit 63 set, bit 47 clear: not canonical
USER_CODE, USER_STACK, RSP0 = 0x140000, 0x150000, 0x70000
USER_RSP = USER_STACK + 0x800
USER_RFLAGS = 0x202

# Distinct values in every register but RSP (and RAX, which the recording handler uses).
REGS = {i: 0x1111_0000 * i + i for i in range(16) if i not in (0, 4)}
NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def boot_pte(va: int) -> int:
    return 0x4000 + (va >> 12) * 8


def put(vm, gpa: int, value: int) -> None:
    vm.write_gpa(gpa, value.to_bytes(8, "little"))


def setup(regs: dict) -> str:
    """Load every register of regs (RSP last, so the loads need no stack)."""
    order = sorted(regs, key=lambda i: i == 4)
    return "\n".join(f"mov {NAMES[i]}, {regs[i]:#x}" for i in order)


def build_user(overrides: dict, fault, post: str = "ud2", vectors=(SS, GP, UD, NP, DF)):
    """At CPL 3: load REGS | overrides (RSP defaults to a mapped user stack), execute `fault`
    (asm text or bytes), then `post`. Exceptions are delivered on RSP0 to recorders.
    Returns vm, cpu, the register values loaded and the faulting instruction's address."""
    kernel, _ = program(LIDT_INSN + f"""
        push 0x23
        push {USER_RSP:#x}
        push {USER_RFLAGS:#x}
        push 0x1b
        push {USER_CODE:#x}
        iretq
    """)
    vm, cpu = machine(kernel)
    install_recorders(vm, vectors)
    for gpa in (0x1000, 0x2000, 0x3000):              # the boot PML4E, PDPTE and PDE
        put(vm, gpa, q(vm, gpa) | US)
    for page in (USER_CODE, USER_STACK):
        put(vm, boot_pte(page), page | P | RW | US)
    regs = {**REGS, 4: USER_RSP, **overrides}
    pre, _ = program(setup(regs), address=USER_CODE)
    fault_addr = USER_CODE + len(pre)
    fb = fault if isinstance(fault, bytes) else program(fault, address=fault_addr)[0]
    after, _ = program(post, address=fault_addr + len(fb))
    vm.write_gpa(USER_CODE, pre + fb + after)
    set_tss_rsp0(vm, cpu, RSP0)
    return vm, cpu, regs, fault_addr


def run_user(overrides: dict, fault, post: str = "ud2"):
    vm, cpu, regs, fault_addr = build_user(overrides, fault, post)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    return vm, cpu, regs, fault_addr


def check_fault(vector, overrides, fault):
    """The instruction faulted with vector and error code 0 before changing anything."""
    vm, cpu, regs, fault_addr = run_user(overrides, fault)
    rec = record(vm)
    assert rec["vector"] == vector, rec["vector"]
    assert rec["rsp"] == RSP0 - 48                    # a frame with an error code
    f = frame(vm, rec["rsp"], True)
    assert f["error_code"] == 0
    # precise: RIP names the faulting instruction, RSP, RFLAGS and the registers as they were
    assert f["rip"] == fault_addr
    assert f["cs"] == 0x1B and f["ss"] == 0x23
    assert f["rsp"] == regs[4]
    assert f["rflags"] & ~RF == USER_RFLAGS
    for i, v in regs.items():
        if i != 4:
            assert cpu.r[i] == v, NAMES[i]


SS_CASES = [
    # id, registers, faulting instruction
    ("push-reg", {4: NC}, "push rcx"),
    ("push-imm", {4: NC}, "push 7"),
    ("push-word", {4: NC}, "push cx"),
    # the first bytes are canonical, the last ones are not: still a non-canonical reference
    ("push-straddles-the-hole", {4: 0x0000_8000_0000_0004}, "push rcx"),
    ("pop-reg", {4: NC}, "pop rcx"),
    ("pop-mem", {4: NC}, "pop qword ptr [rbx]"),       # the stack read comes first
    ("pushfq", {4: NC}, "pushfq"),
    ("popfq", {4: NC}, "popfq"),
    ("call-rel", {4: NC}, f"call {USER_CODE:#x}"),
    ("call-reg", {4: NC, 1: USER_CODE}, "call rcx"),
    ("ret", {4: NC}, "ret"),
    ("ret-imm", {4: NC}, "ret 16"),
    ("iretq", {4: NC}, "iretq"),
    ("load-rsp-disp", {4: NC}, "mov rcx, qword ptr [rsp + 0x10]"),
    ("store-rbp-disp", {5: NC}, "mov qword ptr [rbp + 0x10], rcx"),
    ("load-rbp-index", {5: NC, 6: 1}, "mov rcx, qword ptr [rbp + rsi*8 - 8]"),
    ("rmw-rbp", {5: NC}, "add qword ptr [rbp - 8], rcx"),
    ("push-mem-rbp", {5: NC}, "push qword ptr [rbp]"),  # the operand, through SS
    ("bt-mem-rsp", {4: NC, 1: 3}, "bts qword ptr [rsp], rcx"),
    # DS:[rsp]: the DS prefix is ignored in 64-bit mode, the segment stays SS
    ("ds-prefix-ignored", {4: NC}, bytes.fromhex("3e488b0c24")),
]

GP_CASES = [
    ("fs-override-rsp", {4: NC}, "mov rcx, qword ptr fs:[rsp]"),
    ("gs-override-rbp", {5: NC}, "mov qword ptr gs:[rbp + 8], rcx"),
    ("base-rbx", {3: NC}, "mov rcx, qword ptr [rbx]"),
    ("base-r13", {13: NC}, "mov rcx, qword ptr [r13 + 8]"),     # R13 is not RBP
    ("push-mem-rbx", {3: NC}, "push qword ptr [rbx]"),          # the operand, through DS
    ("pop-mem-rbx", {3: NC}, "pop qword ptr [rbx]"),            # the destination, through DS
    ("call-mem-rbx", {3: NC}, "call qword ptr [rbx]"),
    # SS:[rbx]: the SS prefix is ignored in 64-bit mode, the segment stays DS
    ("ss-prefix-ignored", {3: NC}, bytes.fromhex("36488b0b")),
]


@pytest.mark.parametrize("name,regs,fault", SS_CASES, ids=[c[0] for c in SS_CASES])
def test_non_canonical_stack_reference_is_ss0(name, regs, fault):
    check_fault(SS, regs, fault)


@pytest.mark.parametrize("name,regs,fault", GP_CASES, ids=[c[0] for c in GP_CASES])
def test_non_canonical_reference_through_another_segment_is_gp0(name, regs, fault):
    check_fault(GP, regs, fault)


def test_canonical_stack_and_rbp_accesses_still_work():
    """The same instructions with canonical addresses run (the check is on the address)."""
    vm, cpu, regs, _ = run_user({5: USER_STACK + 0x100}, """
        push rcx
        pushfq
        popfq
        pop rdx
        mov qword ptr [rbp + 0x10], rdx
        mov rdi, qword ptr [rsp - 8]
        call f
        jmp done
    f:  ret
    done:
    """)
    assert record(vm)["vector"] == UD                 # reached the ud2 after the block
    assert cpu.r[2] == regs[1] and cpu.r[7] == regs[1]
    assert q(vm, USER_STACK + 0x110) == regs[1]


def test_ss_is_contributory():
    """#SS with its gate not present: the #NP while delivering it makes a #DF (error code 0)."""
    vm, cpu, regs, fault_addr = build_user({4: NC}, "push rcx", vectors=(GP, NP, DF))
    vm.write_gpa(IDT_BASE + SS * 16, b"\0" * 5 + b"\x0e" + b"\0" * 10)   # P=0
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == DF
    f = frame(vm, rec["rsp"], True)
    assert f["error_code"] == 0 and f["rip"] == fault_addr


@pytest.mark.parametrize("fault", [
    "push rcx", "pop rcx", "call 0x100000", "ret", "mov rax, qword ptr [rsp + 8]",
])
def test_cpl0_with_non_canonical_rsp(fault):
    """At CPL 0 with no usable IDT the #SS ends in a triple fault (#SS, then #GP on the IDT
    limit: #DF, which fails again); the state stays as the faulting instruction found it."""
    regs = {**REGS, 0: 0xAAAA, 4: NC}
    code, _ = program(LIDT_INSN + "\n" + setup(regs))
    fault_addr = 0x100000 + len(code)
    fb, _ = program(fault + "\nhlt", address=fault_addr)
    vm, cpu = machine(code + fb)
    load_idtr(vm, limit=0)
    assert run(cpu, 1000) == "shutdown"
    assert cpu.shutdown.startswith("triple fault: #SS(0x0)"), cpu.shutdown
    assert cpu.rip == fault_addr
    assert cpu.r == [regs[i] for i in range(16)]


def test_cpl0_rbp_reference_delivered_on_the_current_stack():
    """At CPL 0 with a good RSP, #SS(0) from an RBP-based store is delivered normally."""
    regs = {5: NC, 4: 0x80000}
    code, _ = program(LIDT_INSN + "\n" + setup(regs))
    fault_addr = 0x100000 + len(code)
    fb, _ = program("mov qword ptr [rbp], rcx\nhlt", address=fault_addr)
    vm, cpu = machine(code + fb)
    install_recorders(vm, (SS, GP))
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == SS
    assert rec["rsp"] == 0x80000 - 48
    f = frame(vm, rec["rsp"], True)
    assert f["error_code"] == 0 and f["rip"] == fault_addr and f["rsp"] == 0x80000
