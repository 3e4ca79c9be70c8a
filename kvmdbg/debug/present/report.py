"""What the user sees when the program stops: the stop line, then a short context.

Every stop line names the reason, the vCPU and the step (ux-reference "Output
templates"):

    Breakpoint 1, 0x100000 <start>, vcpu 0, step 0
    Catchpoint 2 (marker 0x1), vcpu 0, step 12
    0x100014 <start+20>, vcpu 0, step 5                 (a step, until, advance)

then the context, on stops only: the next instruction (`=> ...`), the registers
that changed since the previous stop, one line from each context provider (the
KVM model's MMU summary plugs in there: Session.context_providers), and the
`display` expressions. Breakpoint command lists run after all that.
"""

from __future__ import annotations

from kvmdbg.debug.present.formats import register_rows
from kvmdbg.debug.present.values import format_natural
from kvmdbg.stop_reason import (BREAKPOINT, CATCHPOINT, HALTED, INTERRUPTED, REACHED, SHUTDOWN,
                                STEP_LIMIT, UNSUPPORTED, WATCHPOINT)
from kvmdbg.errors import CommandError, KvmdbgError

# --- register snapshots behind the `*` marks ---

def snapshot(cpu) -> dict:
    return {name: value for name, value, _ in register_rows(cpu, every=True)}


def snapshot_all(s) -> None:
    st = s.state
    st.regs_last = {v.index: snapshot(v.cpu) for v in s.vm.vcpus}
    st.regs_baseline = {i: dict(r) for i, r in st.regs_last.items()}


def note_stop_registers(s, vcpu: int) -> dict:
    """Move the vCPU's snapshots on by one stop; the registers that changed (name -> value)."""
    st = s.state
    now = snapshot(s.vm.vcpus[vcpu].cpu)
    before = st.regs_last.get(vcpu, now)
    st.regs_baseline[vcpu] = before
    st.regs_last[vcpu] = now
    return {k: v for k, v in now.items() if before.get(k) != v}


def changed_registers(s, vcpu: int) -> set:
    """Registers that differ from the vCPU's previous stop (info registers marks them `*`)."""
    base = s.state.regs_baseline.get(vcpu, {})
    now = snapshot(s.vm.vcpus[vcpu].cpu)
    return {k for k, v in now.items() if base.get(k, v) != v}


# --- the stop report ---

def where(s, stop) -> str:
    """Where a stop happened; the CPU mode too when it is not 64-bit mode."""
    return f"{s.location(stop.rip)}, vcpu {stop.vcpu}, step {stop.step}{mode_note(s, stop)}"


def mode_note(s, stop) -> str:
    mode = s.vm.vcpus[stop.vcpu].cpu.mode_name
    return "" if mode == "64-bit mode" else f" ({mode})"


def _unmodelled(s) -> None:
    """At the end of a run: the ports and MMIO pages no device modelled, each named once."""
    vmm = getattr(s.vm, "vmm", None)
    if vmm is not None and hasattr(vmm, "unmodelled_lines"):
        for line in vmm.unmodelled_lines():
            s.message(line)


def report(s, outcome, context: bool = True) -> None:
    """Print a stop and its context, apply dispositions, queue breakpoint commands.
    context False: the stop line alone (the gdb stub, where gdb shows its own context)."""
    stop = outcome.stop
    hits = outcome.hits
    silent = any(h.point.commands[:1] == ["silent"] for h in hits)
    changed = note_stop_registers(s, stop.vcpu)
    if stop.reason == HALTED:
        status = getattr(s.vm, "exit_status", None)
        if status is not None:
            from kvmdbg.debug.engine.evaluate import Value
            from kvmdbg.debug.engine.expr import S64
            s.convenience["_exitcode"] = Value(status, S64)
            value = s.vm.exit_value
            how = (f"isa-debug-exit (port 0xf4) written {value:#x}" if value is not None
                   else "power-off (port 0x8900)")
            s.message(f"[Guest exited: {how}, exit status {status}] {where(s, stop)}")
            _unmodelled(s)
            return
        if all(v.cpu.halted for v in s.vm.vcpus):
            from kvmdbg.debug.engine.evaluate import Value
            from kvmdbg.debug.engine.expr import S64
            s.convenience["_exitcode"] = Value(0, S64)
            s.message(f"[all vCPUs halted] {where(s, stop)}")
            _unmodelled(s)
        else:
            s.message(f"[vcpu {stop.vcpu} halted] {where(s, stop)}")
        return
    if stop.reason == SHUTDOWN:
        _unmodelled(s)
        from kvmdbg.debug.engine.evaluate import Value
        from kvmdbg.debug.engine.expr import S64
        s.convenience["_exitcode"] = Value(1, S64)
        s.error(f"Guest shut down (KVM_EXIT_SHUTDOWN) on vcpu {stop.vcpu} at step {stop.step}: "
                f"{stop.message}")
        return
    if stop.reason == UNSUPPORTED:
        raise CommandError(stop.message)
    for h in hits:
        if h.error:
            s.error(h.error)
    if not silent:
        _announce(s, stop, hits)
        if context:
            show_context(s, stop, changed)
    for h in hits:
        s.breakpoints.after_stop(h.point)
    pending = []
    for h in hits:
        cmds = h.point.commands
        pending.extend(cmds[1:] if cmds[:1] == ["silent"] else cmds)
    s.state.pending_commands = pending


def _announce(s, stop, hits) -> None:
    if stop.reason == BREAKPOINT and hits:
        bp = hits[0].point
        word = "Temporary breakpoint" if bp.temporary else "Breakpoint"
        s.message(f"{word} {bp.number}, {where(s, stop)}", style="stop")
    elif stop.reason == WATCHPOINT:
        for h in hits:
            wp = h.point
            s.message("")
            s.message(wp.announce(s), style="stop")
            s.message("")
            if h.read or (wp.access == "read"):
                s.message(f"Value = {format_natural(s, h.new)}")
            else:
                s.message(f"Old value = {format_natural(s, h.old) if h.old is not None else '<unreadable>'}")
                s.message(f"New value = {format_natural(s, h.new)}")
        s.message(where(s, stop), style="stop")
    elif stop.reason == CATCHPOINT:
        for h in hits:
            cp = h.point
            word = "Temporary catchpoint" if cp.temporary else "Catchpoint"
            detail = cp.kind.describe(h.event)
            label = cp.kind.name + (f" {detail}" if detail else "")
            s.message(f"{word} {cp.number} ({label}), vcpu {stop.vcpu}, step {stop.step}"
                      f"{mode_note(s, stop)}", style="stop")
    elif stop.reason == INTERRUPTED:
        s.message(f"Interrupted at step {stop.step}, vcpu {stop.vcpu}, {s.location(stop.rip)}",
                  style="stop")
    elif stop.reason in (STEP_LIMIT, REACHED):
        s.message(where(s, stop), style="stop")
    else:
        s.message(f"Stopped ({stop.reason}), {where(s, stop)}", style="stop")


def show_context(s, stop, changed: dict) -> None:
    show_next_insn(s, stop.rip)
    shown = [f"{k}={v:#x}" for k, v in changed.items() if k != "rip"]
    if shown:
        s.message("changed: " + " ".join(shown))
    for provider in s.context_providers:
        try:
            for line in provider(s, stop) or ():
                s.message(line)
        except KvmdbgError as e:
            s.error(str(e))
    show_displays(s)


def show_next_insn(s, rip: int) -> None:
    from kvmdbg.debug.present.formats import insn_text
    d = s.decode_at(rip)
    label = s.location(rip)
    if d is None:
        text = "(bad)"
    else:
        prefix = d.text[:len(d.text) - len(f"{d.mnemonic} {d.op_str}".strip())]
        text = prefix + insn_text(s.symbols, rip, d.length, d.mnemonic, d.op_str)
    s.message(f"=> {label}:\t{text}", style="disasm")
    show_source_line(s, rip)


def show_source_line(s, rip: int) -> None:
    """gdb's frame line when the line table covers rip: `42\t\txor\trax, CR4_SMEP` (the
    source text as written), or `42\tin smep_flip.S` when the file cannot be found."""
    place = getattr(s.state, "stop_place", None)       # set by finish out of inlined code
    if place is not None and place[0] == rip:
        s.state.stop_place = None
        show_source_text(s, *place[1:])
        return
    di = getattr(s, "debug_info", None)
    row = di.row_at(rip) if di is not None else None
    if row is not None:
        show_source_text(s, row.file, row.line)


def show_source_text(s, file: str, line: int) -> None:
    """`42\t<the text of line 42>`, or gdb's one line for a file it cannot find; `list`
    then centres on it."""
    from kvmdbg.debug.commands import source
    source.set_current(s, file, line)
    text = source.source_text(s, file)
    if text is None or line > len(text):
        source.missing_line(s, file, line)
    else:
        s.message(f"{line}\t{text[line - 1]}")


def show_displays(s) -> None:
    from kvmdbg.debug.commands.data import show_display
    for d in s.state.displays:
        if d.enabled:
            show_display(s, d)


# --- breakpoint command lists ---

def is_resuming(s, line: str) -> bool:
    word = line.strip().split("/")[0].split()[:1]
    if not word:
        return False
    try:
        return s.commands.lookup(word[0]).resumes
    except KvmdbgError:
        return False


def run_breakpoint_commands(s) -> bool:
    """Run the command lists of the stop points that stopped the program (gdb: after the
    stop is printed). A resuming command ends its list; the stop it causes may queue
    another. Iterative, so `silent; continue` loops do not grow the Python stack."""
    ok = True
    st = s.state
    st.in_breakpoint_commands = True
    try:
        while st.pending_commands:
            lines, st.pending_commands = st.pending_commands, []
            for line in lines:
                ok = s._run(line) and ok
                if is_resuming(s, line):
                    break
    finally:
        st.in_breakpoint_commands = False
    return ok


__all__ = ["report", "run_breakpoint_commands", "snapshot_all", "changed_registers",
           "show_next_insn"]
