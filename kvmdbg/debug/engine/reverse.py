"""Moving through the recorded history (record.py): back by instructions, back to the
previous stop point, to a step by number, and forward again over the same future.

Each returns an Outcome as stops.resume does, so the commands report it the same way.
Hit counts: a reverse scan evaluates conditions without counting; the stop it lands on
counts once, as a forward stop does (gdb does not decrement them when reversing).
"""

from __future__ import annotations

from kvmdbg.debug.engine import stops
from kvmdbg.debug.engine.record import NO_HISTORY, Detector, Position, Recorder
from kvmdbg.errors import CommandError
from kvmdbg.stop_reason import STEP_LIMIT


def recorder(s) -> Recorder:
    rec = getattr(s, "recorder", None)
    if rec is None or rec.vm is not s.vm:
        raise CommandError("Process record is not active for this program.")
    return rec


def attach(s) -> None:
    """A recorder for the session's VM (again after `run` rebuilt it)."""
    limit = getattr(getattr(s, "recorder", None), "memory_limit", None)
    s.recorder = Recorder(s)
    if limit is not None:
        s.recorder.memory_limit = limit
    s.recorder.attach(s.vm)


def _counts(s):
    return {p.number: (p.hits, p.ignore_count) for p in s.breakpoints._points.values()}


def _put_counts(s, saved) -> None:
    for p in s.breakpoints._points.values():
        if p.number in saved:
            p.hits, p.ignore_count = saved[p.number]


def _arrive(s, rec, pos: Position, vcpu: int | None = None) -> None:
    rec.goto(pos)
    s.breakpoints.refresh_watch_values()
    if vcpu is not None:
        s.current = vcpu


def _plain(s, vcpu: int) -> stops.Outcome:
    return stops.Outcome(s._stop(STEP_LIMIT, vcpu))


def _no_history(s, rec) -> stops.Outcome:
    vcpu = s.current
    _arrive(s, rec, rec.first_position(), vcpu)
    s.message("")
    s.message(NO_HISTORY)
    return _plain(s, vcpu)


def reverse_step(s, n: int = 1) -> stops.Outcome:
    """Back n instructions of the current vCPU (stepping back over stop points as gdb's
    reverse-stepi does: it stops at a breakpoint met on the way)."""
    rec = recorder(s)
    vcpu = s.current
    steps = s.vm.vcpus[vcpu].cpu.steps
    first = rec.first_position()
    target = rec.position_of_step(vcpu, steps - n) if steps - n > 0 else first
    if target is None or target < first:
        target = first
    if steps - n < _first_steps(rec, vcpu):
        return _no_history(s, rec)
    hit = _last_hit(s, rec, rec.pos, lower=target)
    if hit is not None:
        return hit
    _arrive(s, rec, target, vcpu)
    return _plain(s, vcpu)


def _first_steps(rec, vcpu: int) -> int:
    return rec._steps_at_base(vcpu, rec.snapshots[0])


def reverse_continue(s) -> stops.Outcome:
    """Back to the most recent earlier breakpoint, watchpoint or catchpoint hit; at the
    start of history, stop at the boot state with gdb's message."""
    rec = recorder(s)
    hit = _last_hit(s, rec, rec.pos)
    return hit if hit is not None else _no_history(s, rec)


def last_where(s, where) -> stops.Outcome | None:
    """Back to the last earlier moment where(v) held for the vCPU that ran (None: never)."""
    rec = recorder(s)
    vcpu = s.current
    out = _last_hit(s, rec, rec.pos, where=lambda v: v.index == vcpu and where(v))
    return out


def _last_hit(s, rec, here: Position, lower: Position | None = None, where=None):
    """The last stop point hit before here (and after lower): replay each snapshot's
    stretch, newest first, noting every hit; go to the last one and report it."""
    if where is None and not (s.breakpoints.addresses() or s.breakpoints.catchpoints() or
                              s.breakpoints.watchpoints()):
        return None
    saved = _counts(s)
    vcpu = s.current
    table = s.breakpoints
    found = None
    upper = here
    now = (rec.ticks(), s.vm.bus.seq)       # a hit at this very moment is where we are
    try:
        table.running = True
        for sn in reversed([x for x in rec.snapshots if x.entry <= here.entry]):
            start = Position(sn.entry)
            if start >= upper:
                continue
            rec.restore(sn)
            table.caught.clear()
            table.refresh_watch_values()
            det = Detector(s, collect=True, where=where)
            rec.replay_to(upper, det)
            hits = [(p, o) for p, o, key in det.found
                    if key < now and (lower is None or p >= lower)]
            if hits:
                found = hits[-1]
                break
            if lower is not None and start <= lower:
                break
            if s.interrupt_requested:
                break
            upper = start
    finally:
        table.running = False
        table.caught.clear()
        _put_counts(s, saved)
    if found is None and s.interrupt_requested:      # Ctrl-C: back where we were
        _arrive(s, rec, here, vcpu)
        return stops.Outcome(s._stop(stops.INTERRUPTED, vcpu))
    if found is None:
        return None
    pos, out = found
    _arrive(s, rec, pos, out.stop.vcpu)
    for h in out.hits:                    # the stop it lands on counts, once
        h.point.hits += 1
    stop = s._stop(out.stop.reason, out.stop.vcpu, out.stop.message)
    return stops.Outcome(stop, out.hits)


def goto(s, step: int) -> stops.Outcome:
    """To the first moment the current vCPU had retired `step` instructions."""
    rec = recorder(s)
    vcpu = s.current
    first = rec.first_position()
    if step < _first_steps(rec, vcpu):
        return _no_history(s, rec)
    if step == _end_steps(rec, vcpu):
        pos = rec.end                   # where the recorded run stopped, not before its exit
    else:
        pos = rec.stop_at_step(vcpu, step) or rec.position_of_step(vcpu, step)
    if pos is None:
        raise CommandError(f"Target step {step} is beyond the recorded history "
                           f"(it ends at step {_end_steps(rec, vcpu)}).")
    _arrive(s, rec, pos, vcpu)
    return _plain(s, vcpu)


def _end_steps(rec, vcpu: int) -> int:
    base = rec.snapshots[0]
    return _first_steps(rec, vcpu) + sum(e.retired for e in rec.log[base.entry:]
                                            if e.vcpu == vcpu)


def at_history_start(s) -> bool:
    """Whether the session stands at the first moment its history holds."""
    rec = getattr(s.vm, "recorder", None)
    return rec is not None and bool(rec.snapshots) and rec.pos == rec.first_position()


def replaying(s) -> bool:
    """In the past: forward moves replay the recorded future."""
    rec = getattr(s, "recorder", None)
    return rec is not None and rec.vm is s.vm and not rec.at_end()


def resume(s, scope=None, max_steps=None, target=None) -> stops.Outcome:
    """stops.resume while replaying: the same stops, over the recorded future; at its
    end, gdb's message (a step count not used up goes on live)."""
    rec = recorder(s)
    vcpu = s.current if scope is None else scope
    limit = None
    if max_steps is not None:
        if scope is not None:
            limit = rec.position_of_step(scope, s.vm.vcpus[scope].cpu.steps + max_steps)
        else:
            limit = rec.position_of_tick(rec.ticks() + max_steps)
    before = s.vm.vcpus[scope].cpu.steps if scope is not None else rec.ticks()
    table = s.breakpoints
    if target is None and not len(table):      # nothing can stop it: exactly as recorded
        rec.goto(limit or rec.end)
        if limit is not None or max_steps is None:
            return _end_of_replay(s, limit, vcpu)
    table.caught.clear()
    table.running = True
    try:
        det = Detector(s, target=target, skip=rec.pos)
        hit = rec.forward(limit or rec.end, det)
    finally:
        table.running = False
        for v in s.vm.vcpus:
            v.cpu.withdraw_stop(stops.CATCHPOINT)
    s.breakpoints.refresh_watch_values()
    if hit is not None:
        return det.outcome
    if limit is None and max_steps is not None:     # the rest of the count runs live
        now = s.vm.vcpus[scope].cpu.steps if scope is not None else rec.ticks()
        return stops.resume(s, scope, max_steps - (now - before), target)
    return _end_of_replay(s, limit, vcpu)


def _end_of_replay(s, limit, vcpu: int) -> stops.Outcome:
    if limit is None:
        s.message("")
        s.message(NO_HISTORY)
    return _plain(s, vcpu)


def note_change(s) -> None:
    """The debugger wrote to the machine: the recorded future no longer follows."""
    rec = getattr(s, "recorder", None)
    if rec is not None and rec.vm is s.vm:
        rec.changed()
