"""The run loop: fetch a cached handler, call it, count the step; deliver faults.

Written for speed: locals for everything the loop touches, no per-step work
beyond a dict lookup, the call and the step count, and a separate loop for the
case with breakpoints so the plain case pays nothing for them.
"""

from __future__ import annotations

from kvmdbg.cpu.faults import GuestFault, TripleFault
from kvmdbg.cpu.interrupts import deliver

STEP_LIMIT = "step-limit"
BREAKPOINT = "breakpoint"
HALTED = "halted"
SHUTDOWN = "shutdown"


def run(cpu, max_steps: int, breakpoints=None) -> str:
    """Run up to max_steps instructions. Returns why it stopped.

    Reasons: STEP_LIMIT, BREAKPOINT (rip is in breakpoints; never on the first
    instruction, so continuing from a breakpoint works), HALTED, SHUTDOWN, or
    whatever an ops callback put in cpu.stop_reason when it set cpu.pending.
    UnsupportedInstruction propagates with all state intact.
    """
    if cpu.shutdown:
        return SHUTDOWN
    end = cpu.steps + max_steps
    r = cpu.r
    get = cpu.icache.get
    fetch = cpu.fetch_handler
    first = True
    while True:
        if cpu.halted:
            return HALTED
        try:
            if breakpoints:
                while cpu.steps < end:
                    rip = cpu.rip
                    if not first and rip in breakpoints:
                        return BREAKPOINT
                    first = False
                    h = get(rip)
                    if h is None:
                        h = fetch(rip)
                    h(cpu, r)
                    cpu.steps += 1
                    if cpu.pending:
                        break
            else:
                while cpu.steps < end:
                    h = get(cpu.rip)
                    if h is None:
                        h = fetch(cpu.rip)
                    h(cpu, r)
                    cpu.steps += 1
                    if cpu.pending:
                        break
        except GuestFault as fault:
            first = False
            cpu.steps += 1
            try:
                deliver(cpu, fault)
            except TripleFault as tf:
                cpu.shutdown = f"triple fault: {fault} at rip {cpu.rip:#x}, then {tf}"
                return SHUTDOWN
            if cpu.steps >= end:
                return STEP_LIMIT
            continue
        if cpu.pending:
            cpu.pending = False
            reason = cpu.stop_reason or HALTED
            cpu.stop_reason = None
            return reason
        return STEP_LIMIT
