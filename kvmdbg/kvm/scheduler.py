"""Deterministic scheduling of vCPUs and the zap worker in simulated time.

The runnable vCPU with the smallest clock runs next (ties: lower index), for at
most one slice and never past the next-smallest clock, so a vCPU that exits sits
between its exit and its next entry while others run: this is what lets the
two-vCPU refcount race of the thread happen from timing alone. Queued work runs
when the worker's clock is the smallest. Nothing looks at wall-clock time.
"""

from __future__ import annotations

from kvmdbg.stop_reason import HALTED, INTERRUPTED, SHUTDOWN, STEP_LIMIT, VMEXIT

SLICE = 1000


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


def _worker_due(vm, v) -> bool:
    q = vm.worker.queue
    if not q:
        return False
    if v is None:
        return True
    return max(vm.worker.clock, q[0][0]) <= v.cpu.cycles


def run_vm(vm, max_steps: int, breakpoints=None, interrupted=lambda: False):
    """Run the VM for up to max_steps guest instructions in total.

    Returns (reason, vcpu): the vCPU that stopped, or the one that ran last.
    """
    done = 0
    last = vm.vcpus[0]
    started = set()          # each vCPU steps off a breakpoint it starts on, once
    many = len(vm.vcpus) > 1
    while done < max_steps:
        v = pick(vm)
        if _worker_due(vm, v):
            vm.run_worker_item()
            for w in vm.vcpus:                   # a catchpoint on the worker's events
                reason = w.take_stop() if hasattr(w, "take_stop") else ""
                if reason:
                    return reason, w
            continue
        if v is None:
            return HALTED, last
        last = v
        c = v.cpu
        budget = min(SLICE, max_steps - done)
        if many:
            others = [o.cpu.cycles for o in vm.vcpus
                      if o is not v and not o.cpu.halted and not o.cpu.shutdown]
            if others:
                budget = max(1, min(budget, min(others) - c.cycles + 1))
            if vm.worker.queue:
                budget = max(1, min(budget, vm.worker.queue[0][0] - c.cycles + 1))
        before = c.steps
        reason = v.run(budget, breakpoints, skip_first=v.index not in started)
        if c.steps != before:
            started.add(v.index)       # it has stepped off the breakpoint it started on
        done += c.steps - before
        if reason == STEP_LIMIT or reason == VMEXIT:
            if interrupted():
                return INTERRUPTED, v
            continue
        if reason == HALTED:
            if pick(vm) is None and not vm.worker.queue:
                return HALTED, v
            continue
        return reason, v
    return STEP_LIMIT, last


def step_vcpu(v, n: int, breakpoints=None, skip_first: bool = True):
    """Retire n instructions on one vCPU, entering and exiting as needed. With skip_first
    it steps off a breakpoint it starts on (until an instruction has retired, it is
    still on it: the first one may exit before retiring)."""
    c = v.cpu
    start = c.steps
    end = start + n
    while c.steps < end:
        reason = v.run(end - c.steps, breakpoints, skip_first and c.steps == start)
        if reason == VMEXIT:
            continue
        return reason
    return STEP_LIMIT


__all__ = ["run_vm", "step_vcpu", "pick", "HALTED", "SHUTDOWN", "STEP_LIMIT", "INTERRUPTED"]
