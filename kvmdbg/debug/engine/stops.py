"""Resuming the guest under the debugger, with every stop point honoured.

Two engines, chosen per resume:

- the fast one hands the breakpoint addresses to the scheduler (run_vm, or
  step_vcpu for one vCPU), which runs compiled blocks when there are none and
  single instructions otherwise; a breakpoint whose condition is false or whose
  ignore count is not used up is stepped over and the run goes on;
- the stepping one, used while a watchpoint exists, retires one instruction at a
  time and compares every watched value after each (and, for rwatch/awatch,
  looks at the accesses the instruction is about to make). Slower, but exact.

Catchpoints need no engine of their own: the BreakpointTable's bus listener
marks the vCPU pending, and the run loop stops after the current instruction.
While catchpoints are enabled the fast engine single-steps the CPUs, so the run
loop takes single instructions and stops right after the one that caused the
event rather than at the end of its block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmdbg.cpu.regs import RSP
from kvmdbg.debug.engine import access
from kvmdbg.debug.engine.evaluate import Value, evaluate_node
from kvmdbg.debug.engine.expr import Type
from kvmdbg.errors import KvmdbgError, UnsupportedInstruction
from kvmdbg.kvm import scheduler
from kvmdbg.stop_reason import (BREAKPOINT, HALTED, INTERRUPTED, REACHED, SHUTDOWN, STEP_LIMIT,
                                UNSUPPORTED, VMEXIT, WATCHPOINT, CATCHPOINT)

ERROR = Type("error", 0, False, "error")
CHUNK = 50_000                # instructions between checks for Ctrl-C when stepping one vCPU


@dataclass
class Target:
    """Where nexti/until/advance want to stop: an address on one vCPU, with the stack no
    deeper than rsp (so a recursive call does not count as the return)."""
    vcpu: int
    address: int
    rsp: int | None = None
    also: tuple = ()            # more (address, rsp) places: until/advance stop when the
                                # current frame returns to its caller, as gdb's do

    def places(self):
        return ((self.address, self.rsp),) + tuple(self.also)

    def addresses(self) -> set:
        return {a for a, _ in self.places()}


@dataclass
class Hit:
    point: object
    error: str = ""
    event: object = None
    old: Value | None = None
    new: Value | None = None
    read: bool = False


@dataclass
class Outcome:
    stop: object                      # session.Stop
    hits: list = field(default_factory=list)


def total_steps(vm) -> int:
    vcpus = vm.vcpus
    if len(vcpus) == 1:                     # several times per breakpoint hit
        return vcpus[0].cpu.steps
    return sum(v.cpu.steps for v in vcpus)


def resume(s, scope: int | None = None, max_steps: int | None = None,
           target: Target | None = None) -> Outcome:
    """Run all vCPUs (scope None) or one, until a stop point, a halt, a fault, Ctrl-C,
    the target, or max_steps instructions in total."""
    from kvmdbg.debug.engine import reverse
    if reverse.replaying(s):                # in the past: replay the recorded future
        return reverse.resume(s, scope, max_steps, target)
    table = s.breakpoints
    limit = s.max_continue_steps if max_steps is None else max_steps
    table.caught.clear()
    table.running = True
    try:
        if table.watchpoints():
            return _resume_stepping(s, scope, limit, target)
        return _resume_fast(s, scope, limit, target)
    except UnsupportedInstruction as e:
        vcpus = s.vm.vcpus
        v = next((x for x in vcpus if x.cpu.rip == e.rip), vcpus[s.current if scope is None else scope])
        return Outcome(s._stop(UNSUPPORTED, v.index, str(e)))
    finally:
        table.running = False
        for v in s.vm.vcpus:       # a catch on a vCPU that did not run again must not linger
            v.cpu.withdraw_stop(CATCHPOINT)


def _interrupted(s) -> bool:
    return s.interrupt_requested


def _stop_for(s, reason: str, v) -> Outcome:
    if reason == CATCHPOINT:
        return _caught(s, v)
    if reason == INTERRUPTED:
        return Outcome(s._stop(INTERRUPTED, v.index))
    msg = v.cpu.shutdown if reason == SHUTDOWN else ""
    return Outcome(s._stop(reason, v.index, msg))


def _caught(s, v) -> Outcome:
    caught = list(s.breakpoints.caught)
    s.breakpoints.caught.clear()
    if not caught:
        return Outcome(s._stop(STEP_LIMIT, v.index))
    hits = [Hit(cp, err, event=ev) for cp, ev, err in caught]
    s.last_event = caught[-1][1]
    return Outcome(s._stop(CATCHPOINT, v.index), hits)


def at_breakpoint(s, v, target: Target | None) -> Outcome | None:
    """At a breakpoint address: an Outcome if the program should stop here, else None."""
    cpu = v.cpu
    rip = cpu.rip
    hits = []
    for bp in s.breakpoints.at(rip):
        stop, err = s.breakpoints.should_stop(bp, v.index)
        if stop:
            hits.append(Hit(bp, err))
    if hits:
        return Outcome(s._stop(BREAKPOINT, v.index), hits)
    if target is not None and v.index == target.vcpu and any(
            rip == a and (rsp is None or cpu.r[RSP] >= rsp) for a, rsp in target.places()):
        return Outcome(s._stop(REACHED, v.index))
    return None


def _breakpoint_set(s, target):
    bps = s.breakpoints.addresses()
    if target is not None:
        bps |= target.addresses()
    precise = bool(s.breakpoints.catchpoints())
    for v in s.vm.vcpus:
        v.cpu.set_single_step(precise)
    return frozenset(bps) if bps else None      # a frozenset: the run loop memoises by it


def _run_one(s, v, limit: int, bps) -> str:
    """Up to limit instructions on one vCPU, in chunks so Ctrl-C is noticed."""
    cpu = v.cpu
    if cpu.shutdown:
        return SHUTDOWN
    if cpu.halted:
        return HALTED
    end = cpu.steps + limit
    first = True
    while cpu.steps < end:
        if _interrupted(s):
            return INTERRUPTED
        n = min(CHUNK, end - cpu.steps)
        reason = scheduler.step_vcpu(v, n, bps, skip_first=first)
        first = False
        if reason != STEP_LIMIT:
            return reason
    return STEP_LIMIT


def _on_reported_breakpoint(s) -> set:
    """The vCPU still sitting on the breakpoint it last stopped at (to be stepped off)."""
    st = s.last_stop
    if st is None or st.reason != BREAKPOINT or st.vcpu >= len(s.vm.vcpus):
        return set()
    return {st.vcpu} if s.vm.vcpus[st.vcpu].cpu.rip == st.rip else set()


def _step_off(s, v, scope):
    """Retire the instruction v sits on before the scheduler runs (with several vCPUs, or
    one stepped alone): the reported vCPU leaves its breakpoint before any other runs, and
    an instruction that exits (an EPT violation on its fetch, say) cannot make `continue`
    stop at the same breakpoint again. Returns an Outcome if that one instruction stops
    the run."""
    if v.cpu.halted or v.cpu.shutdown:
        return None
    reason = scheduler.step_vcpu(v, 1, None, True)
    if reason == STEP_LIMIT or (reason == HALTED and scope is None and scheduler.pick(s.vm)):
        return None
    return _stop_for(s, reason, v)


def _resume_fast(s, scope, limit: int, target) -> Outcome:
    vm = s.vm
    # The vCPU sitting on the breakpoint it stopped at retires that instruction first,
    # also when one vCPU is stepped (stepi on a `call` whose stack write exits would
    # otherwise report the same breakpoint again).
    step_off = _on_reported_breakpoint(s)
    if scope is not None:
        step_off &= {scope}
    # With one vCPU, run_vm's first run call steps off the breakpoint itself (skip_first
    # holds until an instruction retires, also across an exit), in the same run call: a
    # separate one-instruction run per ignored hit cost 3% of a run that counts hits (the
    # access test's benchmark).
    alone = scope is None and len(vm.vcpus) == 1
    # Nothing below changes the stop points (an ignored hit only counts), so they are
    # looked up once per resume, not once per hit.
    bps = _breakpoint_set(s, target)
    while True:
        before = total_steps(vm)
        again = set()
        for index in sorted(step_off):
            v = vm.vcpus[index]
            if bps and v.cpu.rip in bps and limit > 0 and not alone:
                steps = v.cpu.steps
                out = _step_off(s, v, scope)
                if out is not None:
                    return out
                # The instruction led to a stop address again (a `ret` that returns to
                # itself, a jump to its own start): that is a new arrival, which the
                # scheduler would take for the start it steps off.
                if v.cpu.rip in bps and v.cpu.steps > steps and not v.cpu.halted:
                    out = at_breakpoint(s, v, target)
                    if out is not None:
                        return out
                    again.add(index)
        step_off = again
        limit -= total_steps(vm) - before
        before = total_steps(vm)
        if limit <= 0:
            return Outcome(s._stop(STEP_LIMIT, s.current))
        if again:
            continue
        if scope is None:
            reason, v = scheduler.run_vm(vm, limit, bps, lambda: _interrupted(s))
        else:
            v = vm.vcpus[scope]
            reason = _run_one(s, v, limit, bps)
        limit -= total_steps(vm) - before
        if reason == BREAKPOINT:
            out = at_breakpoint(s, v, target)
            if out is not None:
                return out
            if limit <= 0:
                return Outcome(s._stop(STEP_LIMIT, v.index))
            step_off = {v.index}
            continue
        return _stop_for(s, reason, v)


# --- the stepping engine (watchpoints) ---

def _watch_reads(s, v, wps) -> set:
    """Numbers of the read/access watchpoints whose memory the next instruction reads
    (rwatch) or touches at all (awatch)."""
    hit = set()
    readers = [w for w in wps if w.access != "write" and w.location is not None]
    if not readers:
        return hit
    cpu = v.cpu
    d = s.decode_at(cpu.rip) if v.index == s.current else _decode_on(s, v)
    accs = access.accesses(cpu, d)
    for w in readers:
        space, lo, size = w.location
        want = access.READ if w.access == "read" else access.READ | access.WRITE
        for a, n, kind in accs:
            if not kind & want:
                continue
            if space != "gva":
                from kvmdbg.debug.engine import guest_walk
                try:
                    a = guest_walk.gva_to_gpa(s.vm, cpu, a)
                except KvmdbgError:
                    continue
            if a < lo + size and lo < a + n:
                hit.add(w.number)
    return hit


def _decode_on(s, v):
    """The next instruction of a vCPU other than the selected one (decode_at reads through
    the selected vCPU's page tables)."""
    saved = s.current
    s.current = v.index
    try:
        return s.decode_at(v.cpu.rip)
    finally:
        s.current = saved


def watch_value(s, wp, reader=None) -> Value:
    """The watched value now; an unreadable one is a value too (it can change back)."""
    if reader is not None:
        v = reader.value()
        if v is not None:
            return v
    try:
        return evaluate_node(s, wp._ast, vcpu=wp.vcpu)
    except KvmdbgError as e:
        return Value(f"<error: {e}>", ERROR)


def _check_watchpoints(s, v, wps, read_hits: set, readers: dict) -> list:
    hits = []
    for wp in wps:
        new = watch_value(s, wp, readers.get(wp.number))
        old = wp.old
        changed = old is None or new.v != old.v
        read = wp.number in read_hits
        fire = (wp.access == "write" and changed) or (wp.access == "read" and read) or \
            (wp.access == "access" and (read or changed))
        wp.old = new
        if not fire:
            continue
        stop, err = s.breakpoints.should_stop(wp, v.index)
        if stop:
            hits.append(Hit(wp, err, old=old, new=new, read=read and not changed))
    return hits


def _next_vcpu(s, scope):
    vm = s.vm
    if scope is not None:
        v = vm.vcpus[scope]
        return None if v.cpu.halted or v.cpu.shutdown else v
    return scheduler.pick(vm)


def _worker_due(vm, v) -> bool:
    worker = getattr(vm, "worker", None)
    if worker is None or not worker.queue:
        return False
    return v is None or max(worker.clock, worker.queue[0][0]) <= v.cpu.cycles


def _resume_stepping(s, scope, limit: int, target) -> Outcome:
    from kvmdbg.debug.engine.watch_reader import reader_for
    vm = s.vm
    table = s.breakpoints
    # The stop points cannot change during one resume: look them up once.
    wps = table.watchpoints()
    readers = {wp.number: reader_for(s, wp) for wp in wps}
    bps = table.addresses()
    if target is not None:
        bps |= target.addresses()
    has_readers = any(w.access != "write" for w in wps)
    started = set()
    last = vm.vcpus[s.current if scope is None else scope]
    done = 0
    while done < limit:
        if _interrupted(s):
            return Outcome(s._stop(INTERRUPTED, last.index))
        v = _next_vcpu(s, scope)
        if scope is None and _worker_due(vm, v):
            vm.run_worker_item()
            continue
        if v is None:
            return _stop_for(s, SHUTDOWN if last.cpu.shutdown else HALTED, last)
        last = v
        cpu = v.cpu
        if v.index in started and cpu.rip in bps:
            out = at_breakpoint(s, v, target)
            if out is not None:
                return out
        reads = _watch_reads(s, v, wps) if has_readers else set()
        before = cpu.steps
        reason = v.run(1, None, True)
        done += cpu.steps - before
        if cpu.steps > before:              # on its starting instruction until one retires
            started.add(v.index)
        hits = _check_watchpoints(s, v, wps, reads if cpu.steps > before else set(), readers)
        if hits:
            return Outcome(s._stop(WATCHPOINT, v.index), hits)
        if reason in (STEP_LIMIT, VMEXIT):
            continue
        if reason == HALTED and scope is None and scheduler.pick(vm) is not None:
            continue
        return _stop_for(s, reason, v)
    return Outcome(s._stop(STEP_LIMIT, last.index))
