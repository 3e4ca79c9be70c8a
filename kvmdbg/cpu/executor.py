"""The run loop: fetch a cached handler, call it, count what retired; deliver faults.

It runs basic blocks (cpu.fetch_block); single instructions with cpu.single_step set,
for the last few steps before a step limit, and for a block that holds a breakpoint. A handler
returns how many instructions it retired; if one raises, cpu.rip names the
faulting instruction and ``h.index`` says how many before it retired.
"""

from __future__ import annotations

from kvmdbg.cpu.translate import MAX_BLOCK
from kvmdbg.cpu.faults import GuestFault, SoftwareInterrupt, TripleFault
from kvmdbg.cpu.interrupts import deliver
from kvmdbg.cpu.vmx import VmExit

from kvmdbg.stop_reason import BREAKPOINT, HALTED, SHUTDOWN, STEP_LIMIT, VMEXIT


# Which block handlers hold a breakpoint, for the last set of breakpoints run() was given:
# a pure function of (handler, set), so one memo serves every CPU; a different set (by
# value: the debugger builds a new frozenset on each resume) starts it afresh. Plain sets
# (unhashable, mutable) are not memoised.
_holds_memo: list = [frozenset(), {}]
_HOLDS_KEPT = 65536                 # handlers remembered (a bound, not a policy)


def _holds_breakpoint(breakpoints) -> dict | None:
    """handler -> whether a breakpoint is at one of its instructions (filled by run())."""
    if type(breakpoints) is not frozenset:
        return None
    last = _holds_memo[0]
    if (last is not breakpoints and (hash(last) != hash(breakpoints) or last != breakpoints)
            or len(_holds_memo[1]) > _HOLDS_KEPT):
        _holds_memo[0], _holds_memo[1] = breakpoints, {}
    return _holds_memo[1]


def run(cpu, max_steps: int, breakpoints=None, skip_first: bool = True) -> str:
    """Run up to max_steps instructions. Returns why it stopped.

    Reasons: STEP_LIMIT, BREAKPOINT (rip is in breakpoints; with skip_first not
    on the first instruction, so continuing from a breakpoint works), HALTED,
    SHUTDOWN, or whatever an ops callback put in cpu.stop_reason when it set
    cpu.pending. UnsupportedInstruction propagates with all state intact.
    """
    if cpu.shutdown:
        return SHUTDOWN
    end = cpu.step_end = cpu.steps + max_steps
    r = cpu.r
    iget = cpu.icache.get
    bget = cpu.bcache.get
    fast_x = cpu.fast_x          # a handler is only used while its code page's fetch
                                 # translation is in the fast path (see Cpu.flush_fast)
    fetch = cpu.fetch_handler
    fetch_block = cpu.fetch_block
    reenter = getattr(cpu.ops, "reenter", None)
    first = skip_first
    start_steps = cpu.steps
    while True:
        if cpu.halted:
            return HALTED
        if cpu.vectoring is not None:
            # An event whose delivery exited to the hypervisor, injected again at this entry
            # (once per exit, not per instruction).
            fault, cpu.vectoring = cpu.vectoring, None
            reason = _deliver(cpu, fault)
            if reason is not None:
                return reason
            first = False
        h = None
        try:
            if breakpoints and not cpu.single_step:
                # Blocks that hold no breakpoint run whole; one that does (or the first
                # instruction, whose breakpoint is skipped) runs one instruction at a time
                # up to it, as QEMU keeps translation blocks free of breakpoints.
                isdisjoint = breakpoints.isdisjoint
                holds = _holds_breakpoint(breakpoints)
                no_holds = {} if holds is None else holds
                while True:
                    rip = cpu.rip
                    left = end - cpu.steps
                    if left >= MAX_BLOCK and not first:
                        # A block already known to hold no breakpoint (so none at rip
                        # either) whose page is still in the fetch fast path: run it. Any
                        # other case takes the full path below, which checks rip first.
                        h = bget(rip)
                        if h is not None and no_holds.get(h) is False and rip >> 12 in fast_x:
                            n = h(cpu, r)
                            cpu.steps += n
                            if cpu.pending:
                                break
                            continue
                    if rip in breakpoints and not first:
                        return BREAKPOINT
                    first = False
                    h = None
                    if left >= MAX_BLOCK:
                        h = bget(rip)
                        if h is None or rip >> 12 not in fast_x:
                            h = fetch_block(rip)
                        if holds is None:
                            if not isdisjoint(h.index):
                                h = None
                        else:
                            hit = holds.get(h)
                            if hit is None:
                                hit = holds[h] = not isdisjoint(h.index)
                            if hit:
                                h = None
                    if h is None:
                        if left <= 0:
                            break
                        h = iget(rip)
                        if h is None or rip >> 12 not in fast_x:
                            h = fetch(rip)
                    n = h(cpu, r)
                    cpu.steps += n
                    if cpu.pending:
                        break
            elif breakpoints or cpu.single_step:
                while cpu.steps < end:
                    rip = cpu.rip
                    if not first and breakpoints and rip in breakpoints:
                        return BREAKPOINT
                    first = False
                    h = None
                    h = iget(rip)
                    if h is None or rip >> 12 not in fast_x:
                        h = fetch(rip)
                    cpu.steps += h(cpu, r)
                    if cpu.pending:
                        break
            else:
                while True:
                    left = end - cpu.steps
                    h = None
                    if left >= MAX_BLOCK:
                        rip = cpu.rip
                        h = bget(rip)
                        if h is None or rip >> 12 not in fast_x:
                            h = fetch_block(rip)
                    elif left > 0:
                        rip = cpu.rip
                        h = iget(rip)
                        if h is None or rip >> 12 not in fast_x:
                            h = fetch(rip)
                    else:
                        break
                    n = h(cpu, r)            # a looping block adds its earlier passes itself,
                    cpu.steps += n           # so read cpu.steps only after the call
                    if cpu.pending:
                        break
        except GuestFault as fault:
            first = False
            if h is not None:
                cpu.steps += h.index.get(cpu.rip, h.n - 1)
            cpu.steps += 1
            reason = _deliver(cpu, fault)
            if reason is not None:
                return reason
            if cpu.steps >= end:
                return STEP_LIMIT
            continue
        except VmExit as exit_:
            # Nothing of the exiting instruction retired; the hypervisor handles the exit
            # and the instruction runs again after the next VM entry.
            if h is not None:
                cpu.steps += h.index.get(cpu.rip, 0)
            if cpu.steps == start_steps:
                first = skip_first       # the first instruction runs again: still skip its breakpoint
            reason = _handle_exit(cpu, exit_)
            if reason == VMEXIT and reenter is not None:
                cpu.pending, cpu.stop_reason = True, VMEXIT
                if reenter():
                    reason = None
                else:
                    cpu.pending, cpu.stop_reason = False, None
            if reason is not None:
                return reason
            if cpu.steps >= end:
                return STEP_LIMIT
            continue
        if cpu.pending:
            if cpu.stop_reason == VMEXIT and reenter is not None and reenter():
                continue             # the hypervisor re-entered at once (see Vcpu.reenter)
            cpu.pending = False
            reason = cpu.stop_reason or HALTED
            cpu.stop_reason = None
            return reason
        return STEP_LIMIT


# Exits one delivery may take, each followed by re-injecting the event, before the event is
# left to its instruction to raise again (a bound, not a policy: each exit normally maps one
# page the delivery needs: IDT, GDT, TSS, stack).
_MAX_REINJECT = 8


def _deliver(cpu, fault, reinjected: int = 0):
    """Deliver a guest exception; a reason string if the run must stop."""
    try:
        deliver(cpu, fault)
    except TripleFault as tf:
        cpu.shutdown = f"triple fault: {fault} at rip {cpu.rip:#x}, then {tf}"
        return SHUTDOWN
    except VmExit as exit_:
        # The delivery itself exited (e.g. the IDT, GDT, TSS or stack is not mapped in EPT
        # or in the shadow tables yet). No state changed. A fault the hypervisor injects
        # arrives while `fault` was being delivered (the IDT-vectoring information of the
        # exit); otherwise `fault` is delivered again, as KVM re-injects the vectoring
        # event (vmx_complete_interrupts) instead of running the instruction again. A
        # software interrupt runs again instead (deliver() put RIP back on it).
        return _handle_exit(cpu, exit_, fault, reinjected)
    return None


def _handle_exit(cpu, exit_, vectoring=None, reinjected: int = 0):
    try:
        cpu.ops.handle_exit(cpu, exit_)
    except GuestFault as fault:      # the hypervisor injected an exception
        cpu.steps += 1
        if vectoring is not None:
            cpu.delivering = vectoring.vector        # deliver() applies the #DF rules
        return _deliver(cpu, fault)
    if cpu.shutdown:
        return SHUTDOWN
    reinject = (vectoring is not None and not isinstance(vectoring, SoftwareInterrupt)
                and reinjected < _MAX_REINJECT)
    if cpu.pending:
        cpu.pending = False
        reason = cpu.stop_reason or HALTED
        cpu.stop_reason = None
        if reinject:
            cpu.vectoring = vectoring           # delivered when the run resumes
        return reason
    if reinject:
        return _deliver(cpu, vectoring, reinjected + 1)
    return None
