"""Upper-half (kernel) addresses are canonical; only the hole between the halves is not.

SDM Vol. 1 3.3.7.1: with 48-bit linear addresses an address is canonical when bits 63:47
are all equal, so 0x0000000000000000-0x00007fffffffffff and 0xffff800000000000-
0xffffffffffffffff are usable, and a reference to any other address raises #GP(0) (#SS(0)
through SS: tests/cpu/test_exceptions_stack.py) before paging is consulted (SDM Vol. 3A
6.15, Interrupt 13). An access is a reference to each of its bytes, so one whose last byte
crosses into the hole is #GP(0) even when its first page is mapped. A jump to a
non-canonical target faults on the jump itself (SDM Vol. 2A JMP, 64-bit mode exceptions);
a jump to an unmapped canonical target faults on the fetch there. Expected values come
from those rules and from the page tables each test builds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmdbg.bits import NONCANONICAL, canonical
from kvmdbg.cpu.decoder import Decoder
from kvmdbg.cpu.executor import run
from kvmdbg.kvm.boot import Program, boot
from kvmdbg.kvm.profiles import get_profile
from kvmdbg.kvm.vm import Vm
from tests.cpu.guest_idt import LIDT_INSN, install_recorders, program, q, record
from tests.helpers import machine

ROOT = Path(__file__).resolve().parent.parent.parent
PF, GP = 14, 13
P, RW = 1, 2

BOUNDARIES = [
    (0x0000_7FFF_FFFF_FFFF, True),     # the last lower-half address
    (0x0000_8000_0000_0000, False),    # the first address of the hole
    (0xFFFF_7FFF_FFFF_FFFF, False),    # the last address of the hole
    (0xFFFF_8000_0000_0000, True),     # the first upper-half address
    (0xFFFF_FFFF_FFFF_FFFF, True),
    (0x0000_0000_0000_0000, True),
    (0x8000_0000_0000_0000, False),
]


@pytest.mark.parametrize("va,ok", BOUNDARIES, ids=[f"{va:#x}" for va, _ in BOUNDARIES])
def test_canonical_test_and_its_inlined_form_agree_with_the_sdm(va, ok):
    assert canonical(va) is ok
    assert (eval(NONCANONICAL.format(va)) == 0) is ok      # the form generated code uses


# --- accesses at the boundaries, on hand-built page tables -------------------------------

TOP_LOW_PAGE = 0x0000_7FFF_FFFF_F000     # PML4 255, PDPT 511, PD 511, PT 511
DMAP = 0xFFFF_8000_0000_0000             # PML4 256 aliases the boot PDPT: DMAP + x maps x
PDPT_255, PD_255, PT_255 = 0x600000, 0x601000, 0x602000
TOP_FRAME = 0x603000                     # the frame behind TOP_LOW_PAGE
DATA = 0x300000
MARK_TOP, MARK_DATA = 0x1111_2222_3333_4444, 0x5555_6666_7777_8888
STACK = 0x70000
DONE = DATA + 0x100                      # the body ran to its end


def boundary_machine(body: str, single_step: bool):
    """Boot, map TOP_LOW_PAGE and the DMAP alias, run `body` at CPL 0 with recorders for
    #GP and #PF; returns (vm, cpu, address of the body's first instruction)."""
    code, addrs = program(LIDT_INSN, body + f"\nmov qword ptr [{DONE:#x}], 0x600d\nhlt")
    vm, cpu = machine(code)
    install_recorders(vm, (GP, PF))

    def put(gpa, value):
        vm.write_gpa(gpa, value.to_bytes(8, "little"))
    put(0x1000 + 255 * 8, PDPT_255 | P | RW)
    put(PDPT_255 + 511 * 8, PD_255 | P | RW)
    put(PD_255 + 511 * 8, PT_255 | P | RW)
    put(PT_255 + 511 * 8, TOP_FRAME | P | RW)
    put(0x1000 + 256 * 8, 0x2000 | P | RW)
    put(TOP_FRAME + 0xFF8, MARK_TOP)
    put(DATA, MARK_DATA)
    cpu.single_step = single_step
    return vm, cpu, addrs[1]


def fault_of(vm, cpu):
    assert run(cpu, 10_000) == "halted", cpu.shutdown
    rec = record(vm)
    if rec["vector"] == 0xDEAD:
        assert q(vm, DONE) == 0x600D
        return None
    return rec["vector"], q(vm, rec["rsp"]), q(vm, rec["rsp"] + 8), rec["cr2"]


MODES = pytest.mark.parametrize("single_step", [False, True], ids=["blocks", "stepi"])


@MODES
@pytest.mark.parametrize("va,expect", [
    (TOP_LOW_PAGE + 0xFF8, MARK_TOP),          # the last 8 bytes below the hole
    (DMAP + DATA, MARK_DATA),                  # the first upper-half PML4 entry
    (0xFFFF_FFFF_8000_0000 + DATA, None),      # canonical but unmapped: #PF, CR2 = va
])
def test_loads_below_and_above_the_hole(va, expect, single_step):
    vm, cpu, _ = boundary_machine(f"mov rcx, {va:#x}\nmov rax, qword ptr [rcx]\n"
                                  f"mov qword ptr [{DATA + 8:#x}], rax", single_step)
    got = fault_of(vm, cpu)
    if expect is None:
        assert got is not None and got[0] == PF and got[1] == 0 and got[3] == va
    else:
        assert got is None and q(vm, DATA + 8) == expect


@MODES
@pytest.mark.parametrize("insn", ["mov rax, qword ptr [rcx]", "mov qword ptr [rcx], rax",
                                  "add dword ptr [rcx], 1", "mov ax, word ptr [rcx]"])
@pytest.mark.parametrize("va", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFF8,
                                0xFFFF_7FFF_FFFF_FFFF, 0x0000_7FFF_FFFF_FFFF + 0x7000_0000])
def test_hole_is_gp0(va, insn, single_step):
    vm, cpu, start = boundary_machine(f"mov rcx, {va:#x}\n{insn}", single_step)
    vector, error, rip, _cr2 = fault_of(vm, cpu)
    assert (vector, error) == (GP, 0)
    assert Decoder().decode(vm.read_gpa(rip, 15), rip).text == insn


@MODES
@pytest.mark.parametrize("va,insn", [
    (0x0000_7FFF_FFFF_FFFC, "mov rax, qword ptr [rcx]"),   # first page mapped, last byte in the hole
    (0x0000_7FFF_FFFF_FFFC, "mov qword ptr [rcx], rax"),
    (0x0000_7FFF_FFFF_FFFF, "mov ax, word ptr [rcx]"),
    (0xFFFF_7FFF_FFFF_FFFC, "mov rax, qword ptr [rcx]"),   # starts in the hole, ends above it
])
def test_an_access_straddling_the_hole_is_gp0_not_pf(va, insn, single_step):
    vm, cpu, _ = boundary_machine(f"mov rcx, {va:#x}\n{insn}", single_step)
    vector, error, _rip, _cr2 = fault_of(vm, cpu)
    assert (vector, error) == (GP, 0)
    assert q(vm, TOP_FRAME + 0xFF8) == MARK_TOP                # nothing was written


@MODES
def test_code_stack_and_iretq_in_the_upper_half(single_step):
    """Jump to the DMAP alias of the code, move the stack there, CALL/RET, PUSH/POP, and
    IRETQ to an upper-half RIP with an upper-half RSP; each step leaves a mark."""
    body = f"""
        lea rax, [rip + high]
        mov rcx, {DMAP:#x}
        add rax, rcx
        jmp rax
    high: lea rsp, [rcx + {STACK:#x}]
        call func
        push 0x42
        pop rdx
        mov qword ptr [{DATA + 16:#x}], rdx
        lea rax, [rip + after]
        mov rdx, rsp
        push 0x10
        push rdx
        pushfq
        push 0x08
        push rax
        iretq
    func: mov qword ptr [{DATA + 8:#x}], rsp
        mov rax, qword ptr [rsp]
        mov qword ptr [{DATA + 40:#x}], rax
        ret
    after: lea rax, [rip]
        mov qword ptr [{DATA + 24:#x}], rax
        mov qword ptr [{DATA + 32:#x}], rsp
    """
    vm, cpu, _ = boundary_machine(body, single_step)
    assert fault_of(vm, cpu) is None
    assert q(vm, DATA + 8) == DMAP + STACK - 8                 # CALL pushed there
    assert q(vm, DATA + 40) >> 47 == 0x1FFFF                   # an upper-half return address
    assert q(vm, DATA + 16) == 0x42
    assert q(vm, DATA + 24) >> 47 == 0x1FFFF                   # IRETQ landed in the alias
    assert q(vm, DATA + 32) == DMAP + STACK


@MODES
def test_jump_into_the_hole_faults_on_the_jump(single_step):
    vm, cpu, start = boundary_machine("mov rcx, 0x0000800000000000\njmp rcx", single_step)
    vector, error, rip, _ = fault_of(vm, cpu)
    assert (vector, error) == (GP, 0)
    assert Decoder().decode(vm.read_gpa(rip, 15), rip).text == "jmp rcx"


# --- programs/upper_half.bin: a guest that runs in the upper half as kernels do ----------

KBASE = 0xFFFF_FFFF_8000_0000
LOG, RESULTS = 0x402000, 0x403100
FAULTED, VALUE = 0xFA, 0x5EED_1234_ABCD
UNMAPPED = 0xFFFF_FFFF_C000_0000          # PML4 511, PDPT 511: the program maps only 510


def _run_upper_half(kvm):
    code = (ROOT / "programs" / "upper_half.bin").read_bytes()
    vm = Vm(16 << 20, 1, bare=True) if kvm is None else Vm(16 << 20, 1, profile=get_profile(kvm))
    boot(vm, Program(code))
    if kvm is None:
        assert run(vm.vcpus[0].cpu, 100_000) == "halted"
    else:
        from kvmdbg.kvm.scheduler import run_vm
        run_vm(vm, 100_000)
    return vm, code


@pytest.mark.parametrize("kvm", [None, "v6.12", "v5.15", "shadow"])
def test_upper_half_program(kvm):
    vm, code = _run_upper_half(kvm)
    results = [q(vm, RESULTS + 8 * i) for i in range(12)]
    assert results == [VALUE, VALUE, 2 * VALUE, 1] + [FAULTED] * 7 + [0x77]
    n = q(vm, LOG)
    log = [tuple(q(vm, LOG + 8 + 32 * i + 8 * k) for k in range(4)) for i in range(n)]
    dec = Decoder()

    def insn_at(rip):                     # what the saved RIP names, read from the binary
        assert rip >> 47 == 0x1FFFF, hex(rip)
        off = rip - KBASE - 0x100000
        return dec.decode(code[off:off + 15], rip).text
    # (vector, error code, CR2 or None where CR2 is not written, faulting instruction)
    expected = [
        (PF, 0, UNMAPPED, "mov rax, qword ptr [rcx]"),           # read, not present
        (PF, 2, UNMAPPED + 8, "mov qword ptr [rcx + 8], 1"),     # write, not present
        (GP, 0, None, "mov rax, qword ptr [rcx]"),               # 0x0000800000000000
        (GP, 0, None, "mov rax, qword ptr [rcx]"),               # 0xffff7fffffffffff
        (GP, 0, None, "mov rax, qword ptr [rcx]"),               # straddles the hole
        (GP, 0, None, "jmp rcx"),                                # the jump itself
    ]
    assert len(log) == 7
    for (vector, error, cr2, rip), (ev, ee, ecr2, etext) in zip(log, expected):
        assert (vector, error) == (ev, ee)
        if ecr2 is not None:
            assert cr2 == ecr2
        assert insn_at(rip) == etext
    # the fetch fault: instruction fetch (I/D, with EFER.NXE set), RIP and CR2 the target
    assert log[6] == (PF, 0x10, UNMAPPED, UNMAPPED)
