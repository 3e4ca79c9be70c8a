"""Deterministic vCPU scheduling: the runnable vCPU with the smallest clock runs next.

A vCPU runs for at most one slice before the choice is made again; ties go to
the lower index. Nothing here looks at wall-clock time, so runs are repeatable.
"""

from __future__ import annotations

from kvmdbg.cpu.executor import HALTED, SHUTDOWN, STEP_LIMIT, run

SLICE = 1000


def runnable(vm):
    return [v for v in vm.vcpus if not v.cpu.halted and not v.cpu.shutdown]


def pick(vm):
    """The runnable vCPU with the smallest cycle count, or None."""
    best = None
    for v in vm.vcpus:
        c = v.cpu
        if c.halted or c.shutdown:
            continue
        if best is None or c.cycles < best.cpu.cycles:
            best = v
    return best


def run_vm(vm, max_steps: int, breakpoints=None, interrupted=lambda: False):
    """Run the VM for up to max_steps instructions in total (over all vCPUs).

    Returns (reason, vcpu) where vcpu is the one that stopped (or ran last).
    """
    done = 0
    last = vm.vcpus[0]
    started = set()          # each vCPU steps off a breakpoint it starts on, once
    while done < max_steps:
        v = pick(vm)
        if v is None:
            return HALTED, last
        last = v
        c = v.cpu
        budget = min(SLICE, max_steps - done)
        others = [o.cpu.cycles for o in vm.vcpus if o is not v and not o.cpu.halted and not o.cpu.shutdown]
        if others:
            # Run until this vCPU's clock passes the next one's, so clocks stay close.
            budget = max(1, min(budget, min(others) - c.cycles + 1))
        before = c.steps
        reason = run(c, budget, breakpoints, skip_first=v.index not in started)
        started.add(v.index)
        done += c.steps - before
        if reason == STEP_LIMIT:
            if interrupted():
                return "interrupted", v
            continue
        if reason == HALTED:
            if pick(vm) is None:
                return HALTED, v
            continue
        return reason, v
    return STEP_LIMIT, last


__all__ = ["run_vm", "pick", "runnable", "HALTED", "SHUTDOWN", "STEP_LIMIT"]
