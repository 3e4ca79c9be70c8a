"""compare: the loaded program under two or more KVM profiles, side by side."""

from __future__ import annotations

from kvmdbg.debug.commands.registry import usage_error
from kvmdbg.debug.compare import format_table, interrupted_line, run_all
from kvmdbg.errors import CommandError, ConfigError


def compare_cmd(s, arg: str) -> None:
    """compare PROFILE_A PROFILE_B [PROFILE...] [STEPS]

    Run the loaded program from its boot state under each profile (fresh VMs; this
    session's VM is left alone) until every vCPU halts or STEPS instructions, and show
    cycles per loop iteration (per marker interval, else per CR4 write), exits by reason,
    EPT violations, roots, SPTEs and flushes, with ratios to the first profile.
    Every profile is checked before any runs; Ctrl-C stops the run between instructions
    and shows the table so far.
    """
    words = arg.split()
    steps = 10**9
    if words and words[-1].replace("_", "").isdigit():
        steps = int(words.pop())
    if len(words) < 2:
        raise usage_error(compare_cmd, "Two profiles or more are needed.")
    args = s.boot_args or {}
    mem = args.get("mem", s.vm.mem_size)
    s.interrupt_requested = False
    try:
        results, not_run = run_all(s.program, words, args.get("vcpus", len(s.vm.vcpus)), mem,
                                   args.get("arg", s.arg), args.get("knobs", ()), steps,
                                   interrupted=lambda: s.interrupt_requested)
    except ConfigError as e:
        raise CommandError(str(e)) from None
    for line in format_table(results):
        s.message(line)
    if s.interrupt_requested:
        s.interrupt_requested = False
        raise CommandError(interrupted_line(results, not_run))


def register(reg) -> None:
    reg.add("compare", compare_cmd, category="mmu")
