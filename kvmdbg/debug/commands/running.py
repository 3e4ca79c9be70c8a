"""Running: run, starti, stepi, nexti, step, next, continue, until, advance, vcpu.

Every command that runs the guest goes through stops.resume (which honours
breakpoints, watchpoints and catchpoints) and ends with report.report (the stop
line and its context).
"""

from __future__ import annotations

from kvmdbg.cpu.regs import RSP
from kvmdbg.debug.engine import stops
from kvmdbg.debug.commands.registry import MAX_COUNT, no_arguments, usage_error
from kvmdbg.debug.engine.evaluate import evaluate_address
from kvmdbg.debug.present.report import report, snapshot_all
from kvmdbg.debug.engine.state import confirm
from kvmdbg.errors import CommandError
from kvmdbg.stop_reason import BREAKPOINT, REACHED, STEP_LIMIT


def parse_count(fn, arg: str, s=None) -> int:
    """A positive count: a number, or (given a session) an expression such as $n."""
    if not arg:
        return 1
    try:
        n = int(arg, 0)
    except ValueError:
        n = None
        if s is not None and arg.lstrip().startswith(("$", "(")):
            from kvmdbg.debug.engine.evaluate import evaluate
            try:
                n = evaluate(s, arg).as_int()
            except CommandError:
                n = None
        if n is None:
            raise usage_error(fn, f"Invalid number \"{arg}\".") from None
    if n < 1:
        raise usage_error(fn, f"Invalid number \"{arg}\".")
    if n > MAX_COUNT:
        raise usage_error(fn, f"Count {n} out of range: 1 to {MAX_COUNT}.")
    return n


def _check_runnable(s, every: bool = False) -> None:
    """A command that runs the guest needs something that can run."""
    cpu = s.cpu
    if cpu.shutdown:
        raise CommandError(f"The guest has shut down ({cpu.shutdown}); use \"run\" to start again.")
    if every and all(v.cpu.halted or v.cpu.shutdown for v in s.vm.vcpus) and \
            not getattr(getattr(s.vm, "worker", None), "queue", None):
        raise CommandError("The program is not running: every vCPU has halted.  "
                           "Use \"run\" to start it again.")


def stepi(s, arg: str) -> None:
    """stepi [N]

    Execute N machine instructions (default 1) on the current vCPU, then show
    where it stopped. Breakpoints, watchpoints and catchpoints met on the way stop
    it early. A halted vCPU does not move.
    """
    n = parse_count(stepi, arg, s)
    _check_runnable(s)
    report(s, stops.resume(s, scope=s.current, max_steps=n))


def nexti(s, arg: str) -> None:
    """nexti [N]

    Like stepi, but a CALL is run to its return (all vCPUs run meanwhile, as in
    `continue`), so the called code is stepped over.
    """
    n = parse_count(nexti, arg, s)
    _check_runnable(s)
    for _ in range(n):
        outcome = _next_one(s)
        if outcome.stop.reason not in (REACHED, STEP_LIMIT) or outcome.hits:
            break
    report(s, outcome)


def _next_one(s):
    cpu = s.cpu
    d = s.decode_at(cpu.rip)
    if d is None or not d.mnemonic.startswith("call"):
        return stops.resume(s, scope=s.current, max_steps=1)
    target = stops.Target(s.current, (cpu.rip + d.length) & ((1 << 64) - 1), cpu.r[RSP])
    return stops.resume(s, target=target)


def step(s, arg: str) -> None:
    """step [N]

    Step N source lines (default 1) on the current vCPU, entering calls, where the
    program's line table covers the instruction (programs/NAME.elf, or symbol-file).
    Elsewhere there are no source lines: step is stepi (with a one-time note saying so).
    """
    _by_line(s, arg, step, stepi, over_calls=False)


def next_(s, arg: str) -> None:
    """next [N]

    Step N source lines (default 1), running each CALL to its return (the return address
    on the stack, as nexti), where the line table covers the instruction. Elsewhere there
    are no source lines: next is nexti (with a one-time note saying so).
    """
    _by_line(s, arg, next_, nexti, over_calls=True)


def _by_line(s, arg: str, command, by_instruction, over_calls: bool) -> None:
    """step/next: by source line where the line table covers the PC, else by instruction
    (saying so once)."""
    n = parse_count(command, arg, s)
    if _line_row(s) is None:
        if not s.state.step_hint_shown:
            s.state.step_hint_shown = True
            s.message("(no source lines; stepping by instruction)")
        by_instruction(s, arg)
        return
    _step_lines(s, n, over_calls=over_calls)


def _line_row(s):
    di = getattr(s, "debug_info", None)
    return di.row_at(s.cpu.rip) if di is not None and di.has_lines else None


def _step_lines(s, n: int, over_calls: bool) -> None:
    """gdb's step/next: run instructions until the PC is at the start of another line
    (or leaves the line table), stopping early for any stop point, halt or Ctrl-C."""
    _check_runnable(s)
    outcome = None
    for _ in range(n):
        outcome = _step_one_line(s, over_calls)
        if outcome.stop.reason not in (REACHED, STEP_LIMIT) or outcome.hits:
            break
    report(s, outcome)


def _step_one_line(s, over_calls: bool):
    di = s.debug_info
    row = di.row_at(s.cpu.rip)
    here = (row.file, row.line)
    while True:
        if over_calls:
            outcome = _next_one(s)
        else:
            outcome = stops.resume(s, scope=s.current, max_steps=1)
        if outcome.stop.reason not in (REACHED, STEP_LIMIT) or outcome.hits or \
                s.interrupt_requested:
            return outcome
        rip = s.cpu.rip
        now = di.row_at(rip)
        if now is None:
            return outcome                      # out of the line table: stop there
        if (now.file, now.line) != here and rip == now.address:
            return outcome
        if (now.file, now.line) != here:        # into the middle of another line: its end
            here = (now.file, now.line)


def continue_(s, arg: str) -> None:
    """continue [N]

    Run every vCPU until a breakpoint, watchpoint or catchpoint stops it, all vCPUs
    halt, the guest shuts down, or Ctrl-C. The scheduler always advances the vCPU with
    the smallest clock. With N, the breakpoint stopped at is ignored N-1 more times.
    """
    said = False
    if arg:
        n = parse_count(continue_, arg, s)
        stop = s.last_stop
        bps = s.breakpoints.at(stop.rip) if stop is not None and stop.reason == BREAKPOINT else []
        if bps:
            bps[0].ignore_count = n - 1
            s.message(f"Will ignore next {n - 1} crossings of breakpoint {bps[0].number}.  "
                      "Continuing.")
            said = True
        else:
            s.message("Not stopped at any breakpoint; argument ignored.")
    _check_runnable(s, every=True)
    if not said and not s.state.in_breakpoint_commands:
        s.message("Continuing.")
    report(s, stops.resume(s))


def _location(s, fn, arg: str) -> int:
    if not arg:
        raise usage_error(fn, "Argument required (a location).")
    from kvmdbg.debug.commands import source
    if source.is_line_spec(s, arg):             # LINE or FILE:LINE: the line's first address
        return source.line_location(s, *source.file_line(s, arg))[0]
    if not arg.startswith("*"):                 # FUNC: where `break FUNC` would stop
        from kvmdbg.debug.engine.prologue import function_breakpoint
        at = function_breakpoint(s, arg.strip())
        if at is not None:
            return at
    text = arg[1:] if arg.startswith("*") else arg
    addr, space = evaluate_address(s, text)
    if space != "gva":
        raise CommandError(f"Locations are guest-virtual addresses (got {space}:{addr:#x}).")
    return addr


def until(s, arg: str) -> None:
    """until [ADDR|FUNC|FILE:LINE|LINE]

    Run until ADDR (or the first instruction of a source line, or FUNC where `break FUNC`
    would stop) is reached on the current vCPU, or the current frame returns (with
    call-frame information), or another stop comes first.
    Without ADDR, like nexti. `u` is gdb's abbreviation of it; Bochs's `u/N [ADDR]`
    (a slash and a count: disassemble N instructions) is still understood, and
    `disassemble` is the command for the other forms.
    """
    if arg.startswith("/"):
        from kvmdbg.debug.commands.code import bochs_u
        bochs_u(s, arg)
        return
    if not arg:
        nexti(s, "")
        return
    _run_to(s, _location(s, until, arg))


def finish(s, arg: str) -> None:
    """finish

    Run until the selected frame's function returns: to its caller's PC with the stack
    popped past the frame (so a recursive call of the same function does not count).
    With DWARF call-frame information the return address and frame come from it, and a
    function whose DWARF type is not void has its return value (RAX) printed and put in
    the value history, as gdb does; elsewhere the first return address found on the stack
    (a word after a CALL; the backtrace heuristic).
    """
    no_arguments(finish, arg)
    _check_runnable(s)
    from kvmdbg.debug.engine import stack
    level = stack.selected_level(s)
    frames = stack.stack(s, level + 2).frames
    if len(frames) < level + 2:
        raise CommandError('"finish" not meaningful in the outermost frame.')
    this, caller = frames[level], frames[level + 1]
    if caller.call_site is not None:
        _finish_inlined(s, this, frames)
        return
    cfi = not this.heuristic and this.cfa is not None
    if cfi:
        s.message(f"Run till exit from {stack.frame_line(s, this)}")
        rsp = this.cfa
    else:
        s.message(f"Run till exit from #{this.level}  {s.location(this.pc)}")
        rsp = caller.regs["rsp"]
    outcome = stops.resume(s, target=stops.Target(s.current, caller.pc, rsp & ((1 << 64) - 1)))
    returned = outcome.stop.reason == REACHED and not outcome.hits and s.cpu.rip == caller.pc
    if cfi and returned:
        s.message(stack.frame_line(s, stack.stack(s, 1).frames[0], print_level=False))
    report(s, outcome)
    fn = stack.function_of(s, this) if cfi and returned else None
    if fn is not None and fn.return_type.strip().kind != "void":
        val = stack.return_value(s, fn.return_type)
        if val is not None:
            from kvmdbg.debug.present.values import format_natural
            text = format_natural(s, val)
            s.message(f"Value returned is ${s.history.add(val)} = {text}")


def _finish_inlined(s, this, frames) -> None:
    """finish out of an inlined call (gdb's step out of an inline frame): first back to
    the machine frame it is inlined in (the CFI return of the frames inside), then run,
    stepping over calls, until the PC leaves the inlined block with the stack no deeper."""
    from kvmdbg.debug.engine import stack
    s.message(f"Run till exit from {stack.frame_line(s, this)}")
    if not this.innermost:
        if this.cfa is None or frames[0].cfa is None:
            raise CommandError("Cannot find the frame the inlined call is in.")
        inner = next(f for f in reversed(frames[:this.level]) if f.innermost)
        outcome = stops.resume(s, target=stops.Target(s.current, this.pc, inner.cfa))
        if outcome.stop.reason != REACHED or outcome.hits or s.cpu.rip != this.pc:
            report(s, outcome)
            return
    sc = stack.scope(s)
    die, cu = this.function.die, this.function.cu
    rsp = s.cpu.r[RSP]
    while True:
        outcome = _next_one(s)
        if outcome.stop.reason not in (REACHED, STEP_LIMIT) or outcome.hits or \
                s.interrupt_requested:
            break
        rip = s.cpu.rip
        if s.cpu.r[RSP] >= rsp and not sc.die_contains(die, cu, rip):
            # gdb shows the caller, not an inlined call that begins right here
            shown = next(f for f in stack.stack(s, 1).frames
                         if f.call_site is not None or f.function is None or
                         f.function.die.tag != "DW_TAG_inlined_subroutine" or
                         sc.entry_pc(f.function.die, f.function.cu) != rip)
            s.message(stack.frame_line(s, shown, print_level=False))
            place = stack.frame_place(s, shown)
            if place is not None:               # the report's source line is the caller's too
                s.state.stop_place = (rip, *place)
            break
    report(s, outcome)


def jump(s, arg: str) -> None:
    """jump ADDR

    Resume the current vCPU at ADDR (set its RIP and continue, as gdb does; every vCPU
    runs). A breakpoint at ADDR stops it there at once.
    """
    address = _location(s, jump, arg)
    _check_runnable(s, every=True)
    from kvmdbg.debug.engine.evaluate import write_register
    write_register(s, s.current, "rip", address)
    s.message(f"Continuing at {address:#x}.")
    v = s.vm.vcpus[s.current]
    if address in s.breakpoints.addresses():
        outcome = stops.at_breakpoint(s, v, None)
        if outcome is not None:
            report(s, outcome)
            return
    report(s, stops.resume(s))


def advance(s, arg: str) -> None:
    """advance ADDR|FUNC|FILE:LINE|LINE

    Run until ADDR (or the first instruction of a source line, or FUNC where `break FUNC`
    would stop) is reached on the current vCPU, or the current frame returns (with
    call-frame information), or another stop comes first.
    """
    _run_to(s, _location(s, advance, arg))


def _run_to(s, address: int) -> None:
    _check_runnable(s)
    from kvmdbg.debug.engine import stack
    before = _function_here(s)
    ret = stack.caller_return(s)            # gdb: or until the current frame returns
    outcome = stops.resume(s, target=stops.Target(s.current, address,
                                                  also=(ret,) if ret is not None else ()))
    if outcome.stop.reason == REACHED and not outcome.hits and \
            _function_here(s) not in (None, before):
        # gdb's SRC_AND_LOC: in another function, the frame line before the source line
        s.message(stack.frame_line(s, stack.stack(s, 1).frames[0], print_level=False))
    report(s, outcome)


def _function_here(s):
    """The function the current PC is in (with CFI and DWARF), else None."""
    from kvmdbg.debug.engine import stack
    di = stack.debug_info(s)
    if di is None or not di.cfi or stack.scope(s) is None:
        return None
    f = stack.scope(s).function_at(s.cpu.rip)
    return f.name if f is not None else None


def run(s, arg: str) -> None:
    """run

    Start the program again from its boot state (same program, vCPUs, memory, --arg
    and KVM profile) and run it as `continue` does. Breakpoints and displays are kept.
    """
    if arg:
        raise usage_error(run, "run takes no arguments (use --arg on the command line).")
    if not _restart(s):
        return
    s.message(f"Starting program: {s.program.path}")
    # A breakpoint on the very first instruction stops `run` there (resume steps off
    # the breakpoint it starts on, which is right for continue but not for a fresh start).
    first = s.vm.vcpus[0]
    if first.cpu.rip in s.breakpoints.addresses():
        outcome = stops.at_breakpoint(s, first, None)
        if outcome is not None:
            report(s, outcome)
            return
    report(s, stops.resume(s))


def starti(s, arg: str) -> None:
    """starti

    Start the program again from its boot state and stop before its first instruction.
    """
    if arg:
        raise usage_error(starti, "starti takes no arguments.")
    if not _restart(s):
        return
    s.message(f"Starting program: {s.program.path}")
    s.message("")
    s.message("Program stopped.")
    report(s, stops.Outcome(s._stop(REACHED, 0)))


def _restart(s) -> bool:
    started = any(v.cpu.steps for v in s.vm.vcpus)
    if started and not confirm(s, "The program being debugged has been started already.\n"
                                 "Start it from the beginning? "):
        s.message("Program not restarted.")
        return False
    s.restart()
    snapshot_all(s)
    s.breakpoints.refresh_watch_values()
    return True


def vcpu(s, arg: str) -> None:
    """vcpu [N]

    Select vCPU N (KVM's vCPU id, from 0): the one registers, memory (gva), stepi and the
    other commands refer to. Without N, say which is selected. `thread N+1` is the same
    vCPU in gdb's numbering.
    """
    if not arg:
        v = s.vm.vcpus[s.current]
        state = "shut down" if v.cpu.shutdown else "halted" if v.cpu.halted else "runnable"
        s.message(f"[Current vcpu is {s.current} (of {len(s.vm.vcpus)}), step {v.cpu.steps}, "
                  f"{state}]")
        return
    try:
        n = int(arg, 0)
    except ValueError:
        raise usage_error(vcpu, f"Invalid vCPU number \"{arg}\".") from None
    s.vcpu(n)
    s.current = n
    cpu = s.vm.vcpus[n].cpu
    s.message(f"[Switching to vcpu {n}]")
    s.message(f"{s.location(cpu.rip)}, vcpu {n}, step {cpu.steps}")
    from kvmdbg.debug.present.report import show_next_insn
    show_next_insn(s, cpu.rip)


def _state(cpu) -> str:
    return "shutdown" if cpu.shutdown else "halted" if cpu.halted else "runnable"


def info_vcpus(s, arg: str) -> None:
    """info vcpus

    Every vCPU: its id (KVM's, from 0) and thread number (gdb's, from 1), state, step,
    clock in cycles and where it is; `*` marks the selected one.
    """
    no_arguments(info_vcpus, arg)
    s.message(f"  {'Id':<4}{'Thread':<8}{'State':<11}{'Step':>12}{'Cycles':>14}  Where")
    for v in s.vm.vcpus:
        c = v.cpu
        mark = "*" if v.index == s.current else " "
        s.message(f"{mark} {v.index:<4}{v.index + 1:<8}{_state(c):<11}{c.steps:>12}{c.cycles:>14}  "
                  f"{s.location(c.rip)}")


def info_threads(s, arg: str) -> None:
    """info threads [N...]

    The vCPUs as gdb (and QEMU's gdb stub) number threads: thread 1 is vCPU 0. Id, the
    vCPU and its state, and where it is; `*` marks the selected one.
    """
    vcpus = s.vm.vcpus
    wanted = None
    if arg.strip():
        wanted = set()
        for w in arg.split():
            if not w.isdigit() or not 1 <= int(w) <= len(vcpus):
                raise CommandError(f"No threads match '{arg.strip()}'.")
            wanted.add(int(w) - 1)
    rows = [(f"vCPU {v.index} ({_state(v.cpu)})", v) for v in vcpus
            if wanted is None or v.index in wanted]
    width = max(len(t) for t, _ in rows) + 2
    s.message(f"  {'Id':<5}{'Target Id':<{width}}Frame")
    for target, v in rows:
        mark = "*" if v.index == s.current else " "
        s.message(f"{mark} {v.index + 1:<5}{target:<{width}}{s.location(v.cpu.rip)}, step "
                  f"{v.cpu.steps}")


def thread(s, arg: str) -> None:
    """thread [N]

    Select thread N, gdb's name for vCPU N-1 (threads count from 1, as in gdb and QEMU's gdb
    stub; `vcpu` takes KVM's ids, from 0). Without N, say which is selected.
    """
    n = len(s.vm.vcpus)
    if not arg:
        s.message(f"[Current thread is {s.current + 1} (vCPU {s.current})]")
        return
    text = arg.strip()
    if not text.isdigit() or int(text) == 0:
        raise CommandError(f"Invalid thread ID: {text}")
    t = int(text)
    if t > n:
        raise CommandError(f"Unknown thread {t}.")
    s.current = t - 1
    cpu = s.vm.vcpus[t - 1].cpu
    s.message(f"[Switching to thread {t} (vCPU {t - 1})]")
    s.message(f"#0  {s.location(cpu.rip)}, vcpu {t - 1}, step {cpu.steps}")
    from kvmdbg.debug.present.report import show_next_insn
    show_next_insn(s, cpu.rip)


def register(reg) -> None:
    reg.add("run", run, aliases=("r",), category="running", resumes=True)
    reg.add("starti", starti, aliases=("start",), category="running", resumes=True)
    reg.add("stepi", stepi, aliases=("si",), category="running", repeatable=True, resumes=True)
    reg.add("nexti", nexti, aliases=("ni",), category="running", repeatable=True, resumes=True)
    reg.add("step", step, aliases=("s",), category="running", repeatable=True, resumes=True)
    reg.add("next", next_, aliases=("n",), category="running", repeatable=True, resumes=True)
    reg.add("continue", continue_, aliases=("c", "cont", "fg"), category="running",
            repeatable=True, resumes=True)
    reg.add("until", until, aliases=("u",), category="running", repeatable=True, resumes=True)
    reg.add("finish", finish, aliases=("fin",), category="running", resumes=True)
    reg.add("jump", jump, aliases=("j",), category="running", resumes=True)
    reg.add("advance", advance, category="running", resumes=True)
    reg.add("vcpu", vcpu, category="running")
    reg.add("thread", thread, category="running")
    reg.sub("info").add("vcpus", info_vcpus, category="status")
    reg.sub("info").add("threads", info_threads, category="status")
