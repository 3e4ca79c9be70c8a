"""Breakpoints and block execution: with breakpoints set the run loop still runs blocks
that hold none, so it must stop exactly where single-stepping would: at the first arrival
at a breakpoint address, with the same registers and step count (gdb's rule: a breakpoint
stops before the instruction at its address executes)."""

from __future__ import annotations

import random

from kvmdbg.cpu.executor import BREAKPOINT, HALTED, run
from tests.helpers import asm, machine

LOOP = """
    mov rcx, 200
    xor rax, rax
top:
    add rax, rcx
    mov rbx, rax
    shr rbx, 1
    xor rax, rbx
    dec rcx
    jnz top
    mov rdx, rax
    hlt
"""


def addresses() -> list[int]:
    """Every instruction address of LOOP, from an independent decoder."""
    import capstone
    code = asm(LOOP)
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [i.address for i in cs.disasm(code, 0x100000)]


def single_stepped(bps: set, limit: int):
    """Where one-instruction-at-a-time execution first arrives at a breakpoint."""
    vm, cpu = machine(LOOP)
    cpu.set_single_step(True)
    return run(cpu, limit, bps, skip_first=False), cpu.rip, cpu.steps, list(cpu.r)


def test_blocks_stop_where_single_steps_stop():
    rng = random.Random(7)
    addrs = addresses()
    for _ in range(40):
        bps = set(rng.sample(addrs, rng.randint(1, 3)))
        limit = rng.randint(1, 2000)
        vm, cpu = machine(LOOP)
        got = run(cpu, limit, bps, skip_first=False), cpu.rip, cpu.steps, list(cpu.r)
        assert got == single_stepped(bps, limit), (sorted(bps), limit)


def test_continuing_from_a_breakpoint_inside_a_loop_stops_at_its_next_pass():
    top = addresses()[2]                      # `add rax, rcx`, the loop's first instruction
    vm, cpu = machine(LOOP)
    assert run(cpu, 10_000, {top}, skip_first=False) == BREAKPOINT and cpu.steps == 2
    for n in range(1, 200):
        assert run(cpu, 10_000, {top}, skip_first=True) == BREAKPOINT
        assert cpu.steps == 2 + 6 * n and cpu.r[1] == 200 - n
    assert run(cpu, 10_000, {top}, skip_first=True) == HALTED


BRANCHY = """
    mov rcx, 60
top:
    add rax, 1
    test rax, 3
    jz skip
    add rbx, rax
skip:
    dec rcx
    jnz top
    hlt
"""


def _stops(source: str, sets: list, single: bool) -> list:
    """Every stop of `continue` repeated from the entry until the guest halts, the k-th
    continue with the breakpoint set sets[k % len(sets)] (a user adding and deleting
    breakpoints between continues: the debugger passes a new frozenset each time)."""
    vm, cpu = machine(source)
    cpu.set_single_step(single)
    stops, first = [], False
    while True:
        reason = run(cpu, 100_000, sets[len(stops) % len(sets)], skip_first=first)
        stops.append((reason, cpu.rip, cpu.steps, list(cpu.r)))
        if reason != BREAKPOINT:
            return stops
        first = True


def test_repeated_continues_with_frozen_breakpoint_sets_stop_where_single_steps_stop():
    """For a frozenset the run loop remembers which blocks hold no breakpoint and runs
    those without checking each one's first address; the memo is per set, so stops after
    it is warm, and after the set changes, must still be single-stepping's."""
    import capstone
    rng = random.Random(11)
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for source in (LOOP, BRANCHY):
        addrs = [i.address for i in cs.disasm(asm(source), 0x100000)]
        for _ in range(15):
            sets = [frozenset(rng.sample(addrs, rng.randint(1, 2))) for _ in range(rng.randint(1, 3))]
            assert _stops(source, sets, False) == _stops(source, sets, True), sets
