"""Block handlers against one-instruction handlers: what make_handler leaves out of a block
(the RIP updates of instructions followed by rip-blind ones, the lazy-flags tuples nothing
can see) must not show, above all when an instruction in the middle of the block faults.

Oracle: the same program run with cpu.set_single_step(True), one instruction per handler
call, where every instruction updates RIP and the flags itself (the instructions' semantics
are pinned against unicorn in test_differential.py). A #PF handler records the frame the
processor pushed (RIP, RFLAGS, RSP: SDM Vol. 3A 6.14.2) and every register.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from kvmdbg.cpu.executor import HALTED, run
from tests.cpu.guest_idt import LIDT_INSN, REC, install, load_idtr, program
from tests.helpers import machine

PF = 14
UNMAPPED = 0x7F0000000000          # PML4 entry 254: not present in the boot tables
DATA = 0x90000                     # identity-mapped scratch memory

# Register-only forms that set, read or keep the flags, and forms that touch memory.
ALU = ["add rax, rbx", "sub rcx, 7", "and rdx, rax", "xor rbx, rcx", "cmp rax, rdx",
       "test rcx, rcx", "inc rdx", "dec rax", "adc rbx, 3", "sbb rcx, rax", "shl rdx, 3",
       "neg rbx", "mov rsi, rax", "lea rdi, [rax + rbx * 2 + 1]", "not rcx", "imul rax, rbx"]
MEMORY = [f"mov qword ptr [{DATA:#x}], rax", f"add rbx, qword ptr [{DATA:#x}]", "push rdx",
          "pop rsi", f"cmp qword ptr [{DATA + 8:#x}], 5", "pushfq", "popfq"]
FAULT = f"mov rax, qword ptr [{UNMAPPED:#x}]"

# The #PF handler: every register and RFLAGS to REC, then the frame is in memory at RSP.
RECORD = "\n".join(f"mov qword ptr [{REC + 8 * i:#x}], {reg}" for i, reg in enumerate(
    ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp"])) + "\nhlt"


class _Everything(set):
    """A decode cache's `hot` set that holds every block: each is compiled running on through
    its direct transfers from its first run (as if it had run HOT_RUNS times)."""

    def __contains__(self, key) -> bool:
        return True


def _run(source: str, single: bool, hot: bool = False):
    code, _ = program(LIDT_INSN + "\nmov rax, 0x1234\nmov rbx, -3\nmov rcx, 0x80\n"
                      "mov rdx, 0x7fffffffffffffff\n" + source + "\nhlt")
    vm, cpu = machine(code)
    if hot:
        vm.decode_cache.hot = _Everything()
    install(vm, PF, RECORD)
    load_idtr(vm)
    cpu.set_single_step(single)
    reason = run(cpu, 10_000)
    regs = [cpu.r[i] for i in range(16)]
    record = vm.read_gpa(REC, 7 * 8)
    rsp = int.from_bytes(record[6 * 8:], "little")
    frame = vm.read_gpa(rsp, 6 * 8) if reason == HALTED and rsp else b""
    return reason, cpu.rip, cpu.steps, regs, cpu.get_rflags(), record, frame, vm.read_gpa(DATA, 16)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ALU + MEMORY), min_size=1, max_size=12),
       st.lists(st.sampled_from(ALU), max_size=6), st.booleans())
def test_a_block_matches_single_stepping_with_a_fault_in_the_middle(before, after, fault):
    source = "\n".join(before + ([FAULT] if fault else []) + after)
    assert _run(source, single=False) == _run(source, single=True)


def test_the_flags_of_an_alu_instruction_before_a_faulting_load_are_pushed():
    """cmp sets ZF; the load after it faults before the xor that would clear it: the frame's
    RFLAGS has ZF (bit 6) set and its RIP names the load (SDM Vol. 3A 6.14.2, 6.5: a fault
    reports the faulting instruction)."""
    reason, *_, frame, _data = _run(f"cmp rax, rax\n{FAULT}\nxor rbx, 1", single=False)
    assert reason == HALTED
    rip, rflags = (int.from_bytes(frame[i:i + 8], "little") for i in (8, 24))
    assert rflags & 0x40
    _, addrs = program(LIDT_INSN + "\nmov rax, 0x1234\nmov rbx, -3\nmov rcx, 0x80\n"
                       "mov rdx, 0x7fffffffffffffff\ncmp rax, rax", FAULT)
    assert rip == addrs[1]


# Blocks run on through direct transfers on their page (translate.form_block): conditional
# jumps both ways, calls into a function on the same page and back, direct jumps; a fault
# may sit anywhere along the way.
JCC = ["je", "jne", "jl", "jge", "jb", "jae", "js", "jns"]


@st.composite
def branchy(draw):
    """Source of a program of labelled pieces: each runs a few forms, then jumps forward
    conditionally, calls `fn` or jumps to the next piece; `fn` does a few forms and returns."""
    pieces = draw(st.integers(2, 6))
    lines = []
    for i in range(pieces):
        lines.append(f"p{i}:")
        lines += draw(st.lists(st.sampled_from(ALU + MEMORY), max_size=4))
        if draw(st.integers(0, 9)) == 0:
            lines.append(FAULT)
        end = draw(st.sampled_from(["jcc", "call", "jmp", "none"]))
        target = f"p{draw(st.integers(i + 1, pieces))}"
        if end == "jcc":
            lines.append(f"{draw(st.sampled_from(JCC))} {target}")
        elif end == "call":
            lines.append("call fn")
        elif end == "jmp":
            lines.append(f"jmp {target}")
    lines += [f"p{pieces}:", "hlt", "fn:"] + draw(st.lists(st.sampled_from(ALU), max_size=3)) + ["ret"]
    return "\n".join(lines)


@settings(max_examples=80, deadline=None)
@given(branchy(), st.booleans())
def test_blocks_through_direct_transfers_match_single_stepping(source, hot):
    assert _run(source, single=False, hot=hot) == _run(source, single=True)


def test_a_hot_block_runs_on_through_a_fall_through_and_leaves_at_a_taken_jump():
    """A loop body of three conditional jumps: the first falls through (RAX = RBX), the
    second is taken (leaving before the mov to RDX), the third goes back. It runs first as
    basic blocks; after HOT_RUNS runs the block at the loop's top is compiled again,
    running on through both fall-throughs to the back edge, and loops inside its handler."""
    from kvmdbg.cpu.translate import HOT_RUNS
    top = 0x100002                     # after the 2-byte xor
    vm, cpu = machine("xor ecx, ecx\ntop: mov rax, 1\nmov rbx, 1\ncmp rax, rbx\njne out\n"
                      "inc rax\ncmp rax, rbx\njne skip\nmov rdx, 5\nskip: inc rcx\n"
                      "cmp rcx, 30\njne top\nout: hlt")
    assert run(cpu, 1000) == HALTED
    assert cpu.r[1] == 30 and cpu.r[0] == 2 and cpu.r[2] == 0     # rdx untouched: jumped
    block = cpu.bcache[top]
    assert block.insns[0].address == top
    assert [d.mnemonic for d in block.insns] == ["mov", "mov", "cmp", "jne", "inc", "cmp", "jne",
                                                 "mov", "inc", "cmp", "jne"]
    assert HOT_RUNS < 30


def test_inc_and_dec_keep_the_carry_of_the_instruction_before_them_in_a_block():
    """INC and DEC leave CF as it was (SDM Vol. 2A, INC/DEC: "The CF flag is not affected").
    In a block, an INC/DEC right after a flag-setting instruction takes its CF source from
    the tuple that instruction just built instead of calling inc_dec_carry_source; chains
    of them keep the first CF. Each program ends with the CF it must leave in RSI (SETC)."""
    for setter, cf in (("mov rax, -1\nadd rax, 1", 1), ("mov rax, 5\nsub rax, 3", 0),
                       ("mov rax, 1\nsub rax, 2", 1), ("mov rax, 1\ncmp rax, 2", 1),
                       ("mov rcx, 3\nneg rcx", 1),
                       ("xor rax, rax", 0)):
        for chain in ("dec rbx", "inc rcx\ndec rdx", "dec rbx\ninc rbx\ndec rcx\ninc rdx"):
            source = f"{setter}\n{chain}\nsetc sil"
            vm, cpu = machine(source + "\nhlt")
            assert run(cpu, 100) == HALTED
            assert cpu.r[6] & 0xFF == cf, source
            assert cpu.get_rflags() & 1 == cf, source
            assert _run(source, single=False) == _run(source, single=True), source
            blocks = [h for h in cpu.bcache.values() if {"inc", "dec"} & {d.mnemonic for d in h.insns}]
            assert blocks and all("inc_dec_src" not in h.__code__.co_names for h in blocks), source
