"""Run one program under several KVM profiles and put the costs side by side.

"What would this guest cost under that kernel": each profile gets a fresh VM built
the same way (program, vCPUs, memory, --arg), runs to the end (or a step budget),
and the table shows simulated cycles per loop iteration, exits by reason, EPT
violations, roots, SPTEs and flushes, with each column's ratio to the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmdbg.cpu import vmx
from kvmdbg.kvm.boot import make_vm, resolve_machine
from kvmdbg.kvm.scheduler import run_vm
from kvmdbg.stop_reason import HALTED, INTERRUPTED


@dataclass
class Result:
    profile: str
    reason: str
    cycles: int                     # the largest vCPU clock at the end
    iterations: int                 # marker intervals (3+ markers), else CR4 or CR0 writes, else 1
    unit: str                       # what one iteration is
    stats: dict
    exits_by_reason: dict

    @property
    def per_iteration(self) -> float:
        return self.cycles / max(1, self.iterations)


def run_one(program, profile_name: str, vcpus: int, mem, arg: int, knobs=(),
            max_steps: int = 10**9, interrupted=lambda: False) -> Result:
    vm = make_vm(program, profile_name, knobs, vcpus, mem, arg)
    reason, _v = run_vm(vm, max_steps, interrupted=interrupted)
    cycles = max(v.cpu.cycles for v in vm.vcpus)
    if len(vm.markers) >= 3:              # a marker per loop iteration
        iterations, unit = len(vm.markers) - 1, "marker interval"
        cycles = vm.markers[-1][2] - vm.markers[0][2]
    elif vm.stats["kvmdbg_cr4_writes"]:
        iterations, unit = vm.stats["kvmdbg_cr4_writes"], "CR4 write"
    elif vm.stats["kvmdbg_cr0_writes"]:
        iterations, unit = vm.stats["kvmdbg_cr0_writes"], "CR0 write"
    else:
        iterations, unit = 1, "run"
    by_reason = {vmx.EXIT_NAMES.get(r, str(r)): n for r, n in sorted(vm.exit_reasons.items())}
    stats = dict(vm.stats)
    stats["kvmdbg_instructions"] = sum(v.cpu.steps for v in vm.vcpus)
    return Result(vm.profile.name, reason, cycles, iterations, unit, stats, by_reason)


def run_all(program, names, vcpus: int, mem, arg: int, knobs=(), max_steps: int = 10**9,
            interrupted=lambda: False):
    """(results, names not run): every profile and knob is checked before any runs (a typo
    in the last name costs nothing), then each runs in turn until one is interrupted."""
    for name in names:
        resolve_machine(name, knobs, vcpus, mem)          # ConfigError naming what is wrong
    results = []
    for i, name in enumerate(names):
        results.append(run_one(program, name, vcpus, mem, arg, knobs, max_steps, interrupted))
        if results[-1].reason == INTERRUPTED:
            return results, list(names[i + 1:])
    return results, []


def interrupted_line(results, not_run) -> str:
    last = results[-1]
    steps = last.stats.get("kvmdbg_instructions", 0)
    rest = f"; not run: {', '.join(not_run)}" if not_run else ""
    return f"Interrupted: {last.profile} stopped after {steps:,} instructions{rest}."


ROWS = (
    ("roots allocated", "kvmdbg_roots_allocated"),
    ("roots freed", "kvmdbg_roots_freed"),
    ("EPT violations", "kvmdbg_ept_violations"),
    ("SPTEs created", "kvmdbg_sptes_created"),
    ("SPTEs zapped", "kvmdbg_sptes_zapped"),
    ("MMU resets", "kvmdbg_mmu_resets"),
    ("INVEPT", "kvmdbg_invept"),
    ("INVVPID", "kvmdbg_invvpid"),
    ("remote TLB flushes", "remote_tlb_flush"),
    ("worker cycles", "kvmdbg_worker_cycles"),
    ("instructions", "kvmdbg_instructions"),
)


def _ratio(a: float, b: float) -> str:
    if a == 0:
        return "-" if b == 0 else "inf"
    r = b / a
    return f"{r:.3f}x" if 0 < r < 0.1 else f"{r:.2f}x"


def format_table(results: list) -> list:
    """Lines of the side-by-side table; ratio columns compare each profile to the first."""
    first = results[0]
    names = [r.profile for r in results]
    label_w = 24
    col_w = max(14, *(len(n) + 2 for n in names))
    head = f"{'':<{label_w}}" + "".join(f"{n:>{col_w}}" for n in names)
    if len(results) > 1:
        head += "".join(f"{n + '/' + first.profile:>{max(col_w, len(n) + len(first.profile) + 3)}}"
                        for n in names[1:])
    lines = [head]

    def row(label, values, fmt="{:,}"):
        line = f"{label:<{label_w}}" + "".join(f"{fmt.format(v):>{col_w}}" for v in values)
        if len(results) > 1:
            line += "".join(f"{_ratio(values[0], v):>{max(col_w, len(n) + len(first.profile) + 3)}}"
                            for v, n in zip(values[1:], names[1:]))
        lines.append(line)

    unit = first.unit
    row(f"cycles per {unit}", [r.per_iteration for r in results], "{:,.0f}")
    row("total cycles", [r.cycles for r in results])
    row(f"{unit}s", [r.iterations for r in results])
    row("exits", [r.stats.get("exits", 0) for r in results])
    reasons = sorted({k for r in results for k in r.exits_by_reason})
    for reason in reasons:
        row(f"  {reason}", [r.exits_by_reason.get(reason, 0) for r in results])
    for label, key in ROWS:
        row(label, [r.stats.get(key, 0) for r in results])
    ends = {r.reason for r in results}
    if ends != {HALTED}:
        lines.append("runs ended by: " + ", ".join(f"{r.profile}: {r.reason}" for r in results))
    return lines
