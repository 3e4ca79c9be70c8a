"""Exception delivery through a guest IDT of 64-bit gates, IRETQ, #DF and triple fault.

Expected values come from the SDM (Vol. 3A 6.12-6.15, Vol. 2A IRET): the handler runs
with the gate's CS:RIP, the 64-bit frame (SS, RSP, RFLAGS, CS, RIP, error code) is on
the 16-byte aligned stack, an interrupt gate clears IF, a trap gate keeps it; a fault
while delivering a contributory exception or #PF is #DF, a fault while delivering #DF
shuts the processor down. Frames and records are read back from guest memory.
"""

from __future__ import annotations

import pytest

from kvmdbg.cpu.executor import run
from tests.cpu.guest_idt import (IDT_BASE, LIDT_INSN, REC, TRAP_GATE, frame, install,
                                 install_recorders, load_idtr, program, q, record, recorder,
                                 set_tss_rsp0)
from tests.helpers import machine

DE, BP, UD, DF, NP, GP, PF = 0, 3, 6, 8, 11, 13, 14
WITH_ERROR_CODE = {DF, NP, GP, PF}
P, RW, US, XD = 1, 2, 4, 1 << 63
IF, TF, RF = 0x200, 0x100, 0x10000
NONE = 0xDEAD

# RFLAGS the program sets before the faulting instruction: CF PF ZF SF OF, IF, bit 1
FLAGS = 0x2 | 0x1 | 0x4 | 0x40 | 0x80 | 0x800 | IF
STACK = 0x80000
RSP_AT_FAULT = STACK - 8          # one push: not 16-byte aligned, so the alignment shows
RO_PAGE, NP_PAGE = 0x200000, 0x204000
BOOT_CR4 = 0x620                  # PAE | OSFXSR | OSXMMEXCPT (design section 3)

PROLOGUE = f"""
    {LIDT_INSN}
    mov rax, {FLAGS:#x}
    push rax
    popfq
    push rax
"""


def boot_pte(va):
    return 0x4000 + (va >> 12) * 8


def put(vm, gpa, value):
    vm.write_gpa(gpa, value.to_bytes(8, "little"))


def build(pre: str, fault: str | bytes, post: str = "hlt", vectors=(DE, BP, UD, DF, NP, GP, PF),
          idt=True, **gate_args):
    """Program = PROLOGUE, pre, the faulting instruction, post. Returns vm, cpu and the
    faulting instruction's address and length."""
    parts = [PROLOGUE + pre]
    code, addrs = program(*parts)
    fault_addr = 0x100000 + len(code)
    fault_bytes = fault if isinstance(fault, bytes) else program(fault, address=fault_addr)[0]
    after = program(post, address=fault_addr + len(fault_bytes))[0]
    vm, cpu = machine(code + fault_bytes + after)
    if idt:
        install_recorders(vm, vectors, **gate_args)
    else:
        load_idtr(vm, limit=0)          # LIDT of an empty table, as the boot contract has
    put(vm, boot_pte(RO_PAGE), RO_PAGE | P)
    put(vm, boot_pte(NP_PAGE), NP_PAGE | RW)
    return vm, cpu, fault_addr, len(fault_bytes)


CASES = [
    # id, pre, faulting instruction, vector, error code, CR2, trap (saved RIP = next)
    ("de-div-by-zero", "mov ecx, 0\nmov eax, 1\nmov edx, 0", "div ecx", DE, None, None, False),
    ("ud-ud2", "", "ud2", UD, None, None, False),
    ("ud-0f04", "", b"\x0f\x04", UD, None, None, False),
    ("ud-push-es", "", b"\x06", UD, None, None, False),
    ("gp-cr4-reserved", f"mov rax, {BOOT_CR4 | 1 << 15:#x}", "mov cr4, rax", GP, 0, None, False),
    ("gp-wrmsr-unknown", "mov ecx, 0x12345\nmov eax, 0\nmov edx, 0", "wrmsr", GP, 0, None, False),
    ("gp-noncanonical", "mov rbx, 0x800000000000", "mov rax, qword ptr [rbx]", GP, 0, None, False),
    ("pf-write-readonly", "", f"mov qword ptr [{RO_PAGE + 0x40:#x}], 7", PF, 0x3, RO_PAGE + 0x40, False),
    ("pf-read-not-present", "", f"mov rax, qword ptr [{NP_PAGE + 0x8:#x}]", PF, 0x0, NP_PAGE + 0x8, False),
    ("bp-int3", "", "int3", BP, None, None, True),
]


@pytest.mark.parametrize("name,pre,fault,vector,code,cr2,trap", CASES, ids=[c[0] for c in CASES])
def test_delivery_through_interrupt_gate(name, pre, fault, vector, code, cr2, trap):
    vm, cpu, fault_addr, length = build(pre, fault)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == vector
    has_ec = vector in WITH_ERROR_CODE
    # the new RSP is aligned to 16 bytes before the frame is pushed (SDM 6.14.2)
    assert rec["rsp"] == (RSP_AT_FAULT & ~0xF) - (48 if has_ec else 40)
    f = frame(vm, rec["rsp"], has_ec)
    assert f["error_code"] == code
    assert f["rip"] == fault_addr + (length if trap else 0)
    assert f["cs"] == 0x08 and f["ss"] == 0x10
    assert f["rsp"] == RSP_AT_FAULT
    assert f["rflags"] & ~RF == FLAGS
    # in the handler: IF cleared by the interrupt gate, everything else as before
    assert rec["rflags"] == FLAGS & ~IF
    if cr2 is not None:
        assert rec["cr2"] == cr2 and cpu.cr2 == cr2


def test_trap_gate_keeps_if():
    vm, cpu, fault_addr, _ = build("", "ud2", kind=TRAP_GATE)
    assert run(cpu, 1000) == "halted"
    rec = record(vm)
    assert rec["vector"] == UD
    assert rec["rflags"] == FLAGS
    assert frame(vm, rec["rsp"], False)["rip"] == fault_addr


def test_tf_nt_rf_cleared_in_handler():
    flags = FLAGS | 0x4000                       # NT
    vm, cpu, _, _ = build("mov rax, 0x4ac7\npush rax\npopfq", "ud2")
    assert run(cpu, 1000) == "halted"
    rec = record(vm)
    assert rec["vector"] == UD
    assert frame(vm, rec["rsp"], False)["rflags"] & ~RF == flags
    assert rec["rflags"] == flags & ~(IF | 0x4000)


# --- IRETQ ---

def run_handlers(pre, fault, post, handlers):
    vm, cpu, fault_addr, length = build(pre, fault, post, vectors=())
    for vector, body in handlers.items():
        install(vm, vector, body)
    load_idtr(vm)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    return vm, cpu, fault_addr, length


def test_iretq_after_int3_returns_to_next_instruction():
    vm, cpu, fault_addr, length = run_handlers(
        "mov rbx, 1", "int3", "mov rbx, 0x42\nhlt",
        {BP: f"mov qword ptr [{REC:#x}], 3\niretq"})
    assert q(vm, REC) == 3
    assert cpu.r[3] == 0x42
    assert cpu.r[4] == RSP_AT_FAULT
    assert cpu.get_rflags() == FLAGS, "IRETQ restores RFLAGS, IF included"
    assert cpu.cs == 0x08 and cpu.ss == 0x10


def test_iretq_from_fault_handler_that_skips_the_instruction():
    vm, cpu, fault_addr, length = run_handlers(
        "", "ud2", "mov rbx, 0x43\nhlt",
        {UD: "add qword ptr [rsp], 2\niretq"})
    assert cpu.r[3] == 0x43
    assert cpu.r[4] == RSP_AT_FAULT
    assert cpu.get_rflags() == FLAGS


def test_iretq_after_gp_pops_error_code_first():
    vm, cpu, fault_addr, length = run_handlers(
        "mov rbx, 0x800000000000", "mov rax, qword ptr [rbx]", "mov rcx, 0x44\nhlt",
        {GP: f"mov rax, qword ptr [rsp]\nmov qword ptr [{REC:#x}], rax\nadd rsp, 8\n"
             "add qword ptr [rsp], 3\niretq"})
    assert q(vm, REC) == 0
    assert cpu.r[1] == 0x44 and cpu.r[4] == RSP_AT_FAULT


def test_pf_handler_fixes_the_pte_and_the_instruction_restarts():
    """A fault is restartable: the handler maps the page and IRETQ re-executes the access."""
    handler = f"""
        mov rax, {boot_pte(NP_PAGE):#x}
        mov qword ptr [rax], {NP_PAGE | P | RW:#x}
        mov rax, cr2
        invlpg [rax]
        add rsp, 8
        iretq
    """
    vm, cpu, fault_addr, length = run_handlers(
        "mov rbx, 0x1234", f"mov qword ptr [{NP_PAGE + 0x10:#x}], rbx", "hlt", {PF: handler})
    assert q(vm, NP_PAGE + 0x10) == 0x1234
    assert cpu.cr2 == NP_PAGE + 0x10
    assert cpu.rip == fault_addr + length + 1           # after the hlt
    assert cpu.r[4] == RSP_AT_FAULT


def test_iretq_at_cpl0_loads_if_and_iopl_not_vm():
    """IRETQ at CPL 0 loads IF and IOPL from the frame; VM is never loaded in 64-bit mode."""
    body = """
        mov rax, rsp
        push 0x10
        push rax
        push 0x23202
        push 0x08
        lea rax, [rip + back]
        push rax
        iretq
    back:
        hlt
    """
    vm, cpu = machine(body)
    assert run(cpu, 100) == "halted"
    assert cpu.get_rflags() == 0x2 | IF | 0x3000, hex(cpu.get_rflags())


# --- no IDT: triple fault ---

@pytest.mark.parametrize("name,pre,fault,vector,code,cr2,trap", CASES, ids=[c[0] for c in CASES])
def test_no_idt_triple_faults(name, pre, fault, vector, code, cr2, trap):
    vm, cpu, fault_addr, length = build(pre + "\nmov r15, 0x5151", fault, idt=False)
    assert run(cpu, 1000) == "shutdown"
    msg = cpu.shutdown
    assert msg and "\n" not in msg and "triple fault" in msg
    assert {DE: "#DE", BP: "#BP", UD: "#UD", GP: "#GP", PF: "#PF"}[vector] in msg
    # state stays inspectable: the faulting instruction and registers as they were (for
    # INT3 too: its delivery failed, so the INT3 instruction itself faulted)
    assert cpu.rip == fault_addr
    assert cpu.r[15] == 0x5151
    assert cpu.r[4] == RSP_AT_FAULT
    assert cpu.cs == 0x08
    assert q(vm, RSP_AT_FAULT) == FLAGS                 # the pushed value, nothing over it
    assert q(vm, RSP_AT_FAULT - 8) == 0
    if cr2 is not None:
        assert cpu.cr2 == cr2
    assert run(cpu, 1000) == "shutdown", "a shut-down vCPU stays shut down"


# --- double fault ---

def test_pf_while_delivering_pf_on_unmapped_stack_triple_faults():
    """The handler stack is unmapped: the #PF frame cannot be pushed (#PF -> #DF), and
    without a separate stack (no IST/TSS is modelled) the #DF frame cannot either."""
    stack_page = 0x300000
    vm, cpu, fault_addr, _ = build(f"mov rsp, {stack_page + 0x1000:#x}",
                                   f"mov rax, qword ptr [{NP_PAGE:#x}]")
    put(vm, boot_pte(stack_page), stack_page | RW)          # not present
    assert run(cpu, 1000) == "shutdown"
    assert "triple fault" in cpu.shutdown and "#DF" in cpu.shutdown
    assert record(vm)["vector"] == NONE
    assert cpu.rip == fault_addr
    assert cpu.r[4] == stack_page + 0x1000
    # every #PF detected updates CR2, the ones during delivery included (SDM 6.15)
    assert cpu.cr2 == stack_page + 0x1000 - 8


def test_pf_while_delivering_pf_gives_df():
    """The #PF gate lies on a not-present page; reading it faults (#PF, an implicit
    supervisor read: error code 0) and the result is #DF, delivered through gate 8 on
    the present page. CR2 holds the second fault's address."""
    idt = 0x30000 - 12 * 16                 # gates 0..11 on one page, 12.. on the next
    code, _ = program(PROLOGUE, f"mov rax, qword ptr [{NP_PAGE:#x}]", "hlt")
    vm, cpu = machine(code)
    for v in (DF, GP, NP):
        install(vm, v, recorder(v), base=idt)
    load_idtr(vm, base=idt)
    put(vm, boot_pte(NP_PAGE), NP_PAGE | RW)
    put(vm, boot_pte(0x30000), 0x30000 | RW)                # not present
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == DF
    assert frame(vm, rec["rsp"], True)["error_code"] == 0
    assert rec["rsp"] == (RSP_AT_FAULT & ~0xF) - 48
    gate14 = idt + PF * 16
    assert rec["cr2"] == gate14 and cpu.cr2 == gate14


@pytest.mark.parametrize("first_vector,fault,pre", [
    (PF, f"mov rax, qword ptr [{NP_PAGE:#x}]", ""),            # #PF then #NP: #DF
    (GP, "mov cr4, rax", f"mov rax, {BOOT_CR4 | 1 << 15:#x}"),  # #GP then #NP: #DF
    (DE, "div ecx", "mov ecx, 0\nmov eax, 1\nmov edx, 0"),     # #DE then #NP: #DF
])
def test_contributory_or_pf_then_np_gives_df(first_vector, fault, pre):
    vm, cpu, fault_addr, _ = build(pre, fault, vectors=(DF, NP, GP))
    vm.write_gpa(IDT_BASE + first_vector * 16, b"\0" * 5 + b"\x0e" + b"\0" * 10)  # P=0
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == DF
    assert frame(vm, rec["rsp"], True)["error_code"] == 0


@pytest.mark.parametrize("vector,fault,code", [
    (UD, "ud2", UD * 8 + 2 + 1),         # a hardware exception: EXT=1
    (BP, "int3", BP * 8 + 2),            # a software interrupt: EXT=0
])
def test_benign_then_np_is_delivered_as_np(vector, fault, code):
    """#UD and #BP are benign: a #NP while delivering them is simply delivered; its
    error code names the IDT entry (IDT bit) with EXT as SDM 6.13 says."""
    vm, cpu, fault_addr, _ = build("", fault, vectors=(DF, NP, GP))
    vm.write_gpa(IDT_BASE + vector * 16, b"\0" * 5 + b"\x0e" + b"\0" * 10)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == NP
    f = frame(vm, rec["rsp"], True)
    assert f["error_code"] == code
    assert f["rip"] == fault_addr       # for INT3 too: the #NP is a fault of the INT3 itself


def test_df_delivery_failing_is_a_triple_fault():
    """#PF with gate 14 and gate 8 both beyond the IDT limit: #PF -> #GP (limit) = #DF ->
    #GP (limit) while delivering #DF: shutdown."""
    vm, cpu, fault_addr, _ = build("", f"mov rax, qword ptr [{NP_PAGE:#x}]", vectors=(GP,))
    load_idtr(vm, limit=8 * 16 - 1)            # gates 0..7 only
    assert run(cpu, 1000) == "shutdown"
    assert "triple fault" in cpu.shutdown and "\n" not in cpu.shutdown
    assert cpu.rip == fault_addr and cpu.cr2 == NP_PAGE


# --- from user mode ---

USER_CODE, USER_STACK = 0x140000, 0x150000
BP_REC = REC + 0x40


def to_user(user_body: str, dpl: int):
    """CPL 0 sets up and IRETQs to user_body at CPL 3; int3's gate has the given DPL."""
    code, _ = program(LIDT_INSN + f"""
        push 0x23
        push {USER_STACK + 0x808:#x}
        push 0x202
        push 0x1b
        push {USER_CODE:#x}
        iretq
    """)
    vm, cpu = machine(code)
    install_recorders(vm, (GP, UD))
    install(vm, BP, f"mov qword ptr [{BP_REC:#x}], rsp\niretq", dpl=dpl)
    for gpa in (0x1000, 0x2000, 0x3000):
        put(vm, gpa, q(vm, gpa) | US)
    for page in (USER_CODE, USER_STACK):
        put(vm, boot_pte(page), page | P | RW | US)
    user, _ = program(user_body, address=USER_CODE)
    vm.write_gpa(USER_CODE, user)
    set_tss_rsp0(vm, cpu, 0x70000)
    return vm, cpu


def test_int3_from_user_mode_switches_stack_and_iretq_returns():
    vm, cpu = to_user("int3\nmov rbx, 0x77\nud2", dpl=3)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    # the #BP handler ran on the CPL-0 stack ...
    assert q(vm, BP_REC) == 0x70000 - 40
    # ... and IRETQ returned to CPL 3; ud2 then trapped into the #UD recorder
    rec = record(vm)
    assert rec["vector"] == UD
    assert cpu.r[3] == 0x77
    assert rec["rsp"] == 0x70000 - 40
    f = frame(vm, rec["rsp"], False)
    assert f == {"error_code": None, "rip": USER_CODE + 8, "cs": 0x1B, "rflags": 0x202,
                 "rsp": USER_STACK + 0x808, "ss": 0x23}
    # the handler runs at CPL 0 with a NULL SS (a CPL change in IA-32e mode, SDM 6.14.4)
    assert cpu.cs == 0x08 and cpu.ss == 0


def test_int3_through_dpl0_gate_from_user_mode_is_gp():
    vm, cpu = to_user("int3", dpl=0)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == GP
    f = frame(vm, rec["rsp"], True)
    assert f["error_code"] == BP * 8 + 2
    assert f["rip"] == USER_CODE and f["cs"] == 0x1B


def test_iretq_at_cpl3_loads_neither_if_nor_iopl():
    """At CPL 3 with IOPL 0, IRETQ keeps IF and IOPL whatever the frame says (SDM IRET)."""
    vm, cpu = to_user("""
        mov rax, rsp
        push 0x23
        push rax
        push 0x3002
        push 0x1b
        lea rax, [rip + next]
        push rax
        iretq
    next:
        ud2
    """, dpl=3)
    assert run(cpu, 1000) == "halted", cpu.shutdown
    rec = record(vm)
    assert rec["vector"] == UD
    f = frame(vm, rec["rsp"], False)
    assert f["cs"] == 0x1B and f["rflags"] == 0x202
