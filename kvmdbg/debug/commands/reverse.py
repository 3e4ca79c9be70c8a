"""Reverse execution, with gdb's names: reverse-stepi/-nexti/-step/-next/-continue/-finish,
set exec-direction, goto / record goto, info record, set record snapshot-memory.

Recording is always on (the simulation is deterministic: engine/record.py keeps
snapshots and the log of run calls, and replays from the nearest snapshot).
"""

from __future__ import annotations

from kvmdbg.debug.commands.registry import no_arguments, usage_error
from kvmdbg.debug.commands.running import parse_count
from kvmdbg.debug.engine import reverse
from kvmdbg.debug.present.report import report
from kvmdbg.errors import CommandError


def reverse_stepi(s, arg: str) -> None:
    """reverse-stepi [N]

    Step back N machine instructions (default 1) of the current vCPU: the machine is
    as it was then (restored from a snapshot and replayed). A breakpoint, watchpoint
    or catchpoint hit on the way back stops it there.
    """
    n = parse_count(reverse_stepi, arg, s)
    report(s, reverse.reverse_step(s, n))


def reverse_nexti(s, arg: str) -> None:
    """reverse-nexti [N]

    Like reverse-stepi, but stepping back over a RET goes on back to its CALL, so a
    called function is stepped over (gdb's reverse-nexti).
    """
    n = parse_count(reverse_nexti, arg, s)
    outcome = None
    for _ in range(n):
        outcome = _back_one_over_calls(s)
        if outcome.hits or s.cpu.steps == 0:
            break
    report(s, outcome)


def _back_one_over_calls(s):
    from kvmdbg.cpu.regs import RSP
    rsp = s.cpu.r[RSP]
    outcome = reverse.reverse_step(s, 1)
    d = s.decode_at(s.cpu.rip)
    if outcome.hits or d is None or not d.mnemonic.startswith("ret") or s.cpu.r[RSP] >= rsp:
        return outcome
    # Came back into the function that RET left: on to the CALL (the last moment the
    # stack pointer was where it is after the return).
    back = reverse.last_where(s, lambda v: v.cpu.r[RSP] >= rsp)
    return back if back is not None else outcome


def reverse_step(s, arg: str) -> None:
    """reverse-step [N]

    Step back N source lines where the program's line table covers the instruction;
    elsewhere (no source lines) it is reverse-stepi.
    """
    _reverse_lines(s, arg, reverse_step)


def reverse_next(s, arg: str) -> None:
    """reverse-next [N]

    Step back N source lines, over calls, where the line table covers the instruction;
    elsewhere it is reverse-nexti.
    """
    _reverse_lines(s, arg, reverse_next)


def _reverse_lines(s, arg: str, fn) -> None:
    """Back instruction by instruction until the PC is at the start of another line."""
    n = parse_count(fn, arg, s)
    di = getattr(s, "debug_info", None)
    row = di.row_at(s.cpu.rip) if di is not None and di.has_lines else None
    if row is None:
        report(s, reverse.reverse_step(s, n))
        return
    outcome = None
    for _ in range(n):
        here = (row.file, row.line)
        while True:
            outcome = reverse.reverse_step(s, 1)
            now = di.row_at(s.cpu.rip)
            if outcome.hits or now is None or s.cpu.steps == 0 or \
                    ((now.file, now.line) != here and s.cpu.rip == now.address):
                break
        if outcome.hits or now is None:
            break
        row = now
    report(s, outcome)


def reverse_continue(s, arg: str) -> None:
    """reverse-continue [N]

    Run backward to the most recent earlier breakpoint, watchpoint or catchpoint hit
    (`catch root-zap` then `reverse-continue`: back to the previous zap). With N, the
    N-th one back. With none left: "No more reverse-execution history." at the boot state.
    """
    n = parse_count(reverse_continue, arg, s)
    outcome = None
    for _ in range(n):
        outcome = reverse.reverse_continue(s)
        if not outcome.hits:
            break
    report(s, outcome)


def reverse_finish(s, arg: str) -> None:
    """reverse-finish

    Run backward to the CALL of the current function: the last earlier moment the stack
    pointer was above the slot of the return address (found on the stack as finish and
    backtrace find it).
    """
    no_arguments(reverse_finish, arg)
    from kvmdbg.debug.commands.code import stack_frames
    frames = stack_frames(s, 2)
    if len(frames) < 2:
        raise CommandError('"finish" not meaningful in the outermost frame.')
    (_rip, _), (_ret, slot) = frames
    from kvmdbg.cpu.regs import RSP
    s.message(f"Run back to call of #0  {s.location(s.cpu.rip)}")
    outcome = reverse.last_where(s, lambda v: v.cpu.r[RSP] > slot)
    if outcome is None:
        raise CommandError('"reverse-finish" found no call to go back to in the history.')
    report(s, outcome)


def goto_(s, arg: str) -> None:
    """goto STEP

    Move to step STEP of the current vCPU (the number every stop line ends with), in
    either direction, within the recorded history. `record goto` is gdb's name for it;
    `goto begin` and `goto end` are its ends.
    """
    text = arg.strip()
    if not text:
        raise usage_error(goto_, "Argument required (a step number).")
    rec = reverse.recorder(s)
    if text in ("begin", "start"):
        report(s, reverse.goto(s, reverse._first_steps(rec, s.current)))
        return
    if text == "end":
        report(s, reverse.goto(s, reverse._end_steps(rec, s.current)))
        return
    try:
        step = int(text, 0)
    except ValueError:
        raise usage_error(goto_, f"Invalid step number \"{text}\".") from None
    if step < 0:
        raise usage_error(goto_, f"Invalid step number \"{text}\".")
    report(s, reverse.goto(s, step))


def record_(s, arg: str) -> None:
    """record [full|goto STEP|stop]

    Recording is always on in kvmdbg (the simulation is deterministic), so `record` and
    `record full` only say so; `record goto STEP` is goto; `record stop` is refused.
    """
    words = arg.split()
    if not words or words[0] in ("full", "btrace"):
        s.message("Process record is always on in kvmdbg (deterministic replay).")
        return
    if words[0] == "goto":
        goto_(s, " ".join(words[1:]))
        return
    if words[0] == "stop":
        raise CommandError("Process record cannot be stopped in kvmdbg: it costs only snapshots.")
    raise usage_error(record_, f"Undefined record command: \"{words[0]}\".")


def info_record(s, arg: str) -> None:
    """info record

    The recorded history: its first and last step, where the current vCPU is, the
    snapshots kept (their count, spacing and memory) and the log of run calls.
    """
    no_arguments(info_record, arg)
    rec = reverse.recorder(s)
    v = s.current
    first = reverse._first_steps(rec, v)
    last = reverse._end_steps(rec, v)
    s.message("Active record target: record-full (snapshots and replay)")
    s.message("Replay mode:" if not rec.at_end() else "Record mode:")
    s.message(f"Lowest recorded step is {first} (vcpu {v}).")
    s.message(f"Highest recorded step is {last} (vcpu {v}).")
    s.message(f"Current step is {s.vm.vcpus[v].cpu.steps}.")
    s.message(f"Log of run calls: {len(rec.log)} entries.")
    mem = rec.memory()
    s.message(f"Snapshots: {len(rec.snapshots)}, every {rec.interval:,} cycles or more, "
              f"{_size(mem)} (limit {_size(rec.memory_limit)}).")
    for sn in rec.snapshots[-5:]:
        kind = " (after a state change)" if sn.barrier else ""
        s.message(f"  at instruction {sn.tick}: {_size(len(sn.blob))} state, "
                  f"{len(sn.pages)} pages{kind}")


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def set_record(s, arg: str) -> None:
    """set record snapshot-memory SIZE

    The memory the snapshots may use (e.g. 256M, 1G); past it, old snapshots are
    thinned (every other one goes, and new ones are spaced twice as far), never refused.
    """
    words = arg.split()
    if len(words) != 2 or words[0] != "snapshot-memory":
        raise usage_error(set_record)
    text = words[1].upper().rstrip("B").rstrip("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    try:
        n = int(text[:-1] if scale > 1 else text, 0) * scale
    except ValueError:
        raise usage_error(set_record, f"Invalid size \"{words[1]}\".") from None
    if n < 1 << 20:
        raise CommandError(f"Invalid size \"{words[1]}\": at least 1M.")
    rec = reverse.recorder(s)
    rec.memory_limit = n
    rec._thin()
    s.message(f"Snapshot memory limit is {_size(n)}.")


def show_record(s, arg: str) -> None:
    """show record snapshot-memory

    The memory limit of the snapshots.
    """
    s.message(f"Snapshot memory limit is {_size(reverse.recorder(s).memory_limit)}.")


def set_exec_direction(s, arg: str) -> None:
    """set exec-direction forward|reverse

    In reverse, stepi, nexti, step, next, continue and finish run backward (as their
    reverse-* forms); forward is the default.
    """
    text = arg.strip()
    if text not in ("forward", "reverse"):
        raise usage_error(set_exec_direction, f"Undefined item: \"{text}\".")
    s.state.exec_reverse = text == "reverse"


def show_exec_direction(s, arg: str) -> None:
    """show exec-direction

    The direction stepi, continue and the others run in.
    """
    d = "Reverse" if getattr(s.state, "exec_reverse", False) else "Forward"
    s.message(f"{d}.")


REVERSED = {"stepi": reverse_stepi, "nexti": reverse_nexti, "step": reverse_step,
            "next": reverse_next, "continue": reverse_continue, "finish": reverse_finish}


def _directed(name, forward):
    """The running command `name`, run backward while exec-direction is reverse."""
    def run(s, arg: str) -> None:
        if getattr(s.state, "exec_reverse", False):
            REVERSED[name](s, arg)
        else:
            forward(s, arg)
    run.__doc__ = forward.__doc__
    run.__name__ = forward.__name__
    return run


def attach(session) -> None:
    reverse.attach(session)
    session.restart_hooks.append(reverse.attach)


def register(reg) -> None:
    for name, fn, aliases in (("reverse-stepi", reverse_stepi, ("rsi",)),
                              ("reverse-nexti", reverse_nexti, ("rni",)),
                              ("reverse-step", reverse_step, ("rs",)),
                              ("reverse-next", reverse_next, ("rn",)),
                              ("reverse-continue", reverse_continue, ("rc",)),
                              ("reverse-finish", reverse_finish, ())):
        reg.add(name, fn, aliases=aliases, category="running", repeatable=True, resumes=True)
    reg.add("goto", goto_, category="running", resumes=True)
    reg.add("record", record_, aliases=("rec",), category="running")
    reg.sub("info").add("record", info_record, category="status")
    reg.sub("set").add("record", set_record, category="running")
    reg.sub("show").add("record", show_record, category="running")
    reg.sub("set").add("exec-direction", set_exec_direction, category="running")
    reg.sub("show").add("exec-direction", show_exec_direction, category="running")
    for name in REVERSED:
        cmd = reg.find(name)
        if cmd is not None and cmd.name == name:
            cmd.fn = _directed(name, cmd.fn)
