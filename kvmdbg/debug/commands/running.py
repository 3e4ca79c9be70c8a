"""Running: stepi, continue."""

from __future__ import annotations

from kvmdbg.cpu.executor import BREAKPOINT, HALTED, SHUTDOWN, STEP_LIMIT
from kvmdbg.debug.commands.registry import usage_error
from kvmdbg.debug.session import INTERRUPTED, UNSUPPORTED
from kvmdbg.errors import CommandError


def parse_count(fn, arg: str) -> int:
    if not arg:
        return 1
    try:
        n = int(arg, 0)
    except ValueError:
        raise usage_error(fn, f"Invalid number \"{arg}\".") from None
    if n < 1:
        raise usage_error(fn, f"Invalid number \"{arg}\".")
    return n


def report_stop(s, stop) -> None:
    """The stop line (reason, vCPU, step) and the next instruction."""
    where = f"{s.location(stop.rip)}, vcpu {stop.vcpu}, step {stop.step}"
    if stop.reason == STEP_LIMIT:
        s.message(where)
    elif stop.reason == HALTED:
        if all(v.cpu.halted for v in s.vm.vcpus):
            s.message(f"[all vCPUs halted] {where}")
        else:
            s.message(f"[vcpu {stop.vcpu} halted] {where}")
        return
    elif stop.reason == SHUTDOWN:
        s.error(f"Guest shut down (KVM_EXIT_SHUTDOWN) on vcpu {stop.vcpu} at step {stop.step}: "
                f"{stop.message}")
        return
    elif stop.reason == UNSUPPORTED:
        raise CommandError(stop.message)
    elif stop.reason == INTERRUPTED:
        s.message(f"Interrupted at step {stop.step}, vcpu {stop.vcpu}, {s.location(stop.rip)}")
    elif stop.reason == BREAKPOINT:
        s.message(f"Breakpoint, {where}")
    else:
        s.message(f"Stopped ({stop.reason}), {where}")
    show_next_insn(s, stop.rip)


def show_next_insn(s, rip: int) -> None:
    d = s.decode_at(rip)
    sym = s.symbols.lookup(rip)
    label = f"{rip:#x} {sym}" if sym else f"{rip:#x}"
    if d is None:
        s.message(f"=> {label}:\t(bad)")
    else:
        s.message(f"=> {label}:\t{d.text}")


def stepi(s, arg: str) -> None:
    """stepi [N]

    Execute N machine instructions (default 1) on the current vCPU, then show
    where it stopped. A halted vCPU does not move.
    """
    n = parse_count(stepi, arg)
    report_stop(s, s.step(n))


def continue_(s, arg: str) -> None:
    """continue [N]

    Run every vCPU until a breakpoint, a halt of all vCPUs, a guest shutdown or
    an interrupt. The scheduler always advances the vCPU with the smallest clock.
    """
    if arg:
        parse_count(continue_, arg)       # N is an ignore count once breakpoints exist
    s.message("Continuing.")
    report_stop(s, s.run())


def register(reg) -> None:
    reg.add("stepi", stepi, aliases=("si",), category="running", repeatable=True)
    reg.add("continue", continue_, aliases=("c", "cont"), category="running", repeatable=True)
