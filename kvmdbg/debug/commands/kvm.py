"""The KVM model's settings, counters and events: info memslots/events/stats/kvm/costs,
set kvm/cost, the boot options of the next run (set profile/knobs/vcpus/arg), event
recording for a session, and the MMU summary line after each stop.
"""

from __future__ import annotations

import re

from kvmdbg.debug import catchpoints
from kvmdbg.debug.commands.mmu import is_shadow, parse_int, roots_of
from kvmdbg.debug.commands.registry import usage_error
from kvmdbg.errors import CommandError, ConfigError
from kvmdbg.kvm.boot import resolve_machine
from kvmdbg.kvm.profiles import KNOB_HELP, with_knob

EVENT_LOG_SIZE = 200_000        # events remembered for `info events` (a ring)
RUNTIME_KNOBS = ("tdp_put_last_ref", "invalid_root_zap", "invalid_root_zap_flush", "cr4_flush_split",
                 "cr0_wp_no_unload", "slot_zap_all", "rfc_skip_post_set_cr4", "huge_pages",
                 "tdp_root_role_has_guest_bits")



# --- attaching to a session ---

def attach(s) -> None:
    """Record events and keep stats snapshots for this session (and after `run`)."""
    _record(s)
    s.context_providers.append(summary_line)
    s.restart_hooks.append(_record)


def _record(s) -> None:
    if getattr(s, "record_events", True):
        s.vm.bus.set_keep(EVENT_LOG_SIZE)
    s.mmu_stats_prev = all_stats(s.vm)
    s.mmu_stats_at_stop = dict(s.mmu_stats_prev)


def all_stats(vm) -> dict:
    """The VM's counters plus the per-vCPU ones folded in (cycles, instructions, TLB misses)."""
    st = dict(vm.stats)
    st["instructions"] = sum(v.cpu.steps for v in vm.vcpus)
    st["cycles"] = max(v.cpu.cycles for v in vm.vcpus)
    st["tlb_misses"] = sum(v.cpu.walks for v in vm.vcpus)
    st["tlb_entries"] = sum(len(v.cpu.tlb) for v in vm.vcpus)
    st["live_sptes"] = vm.tdp_mmu.live_sptes
    return st


def summary_line(s, stop) -> list:
    """One line after each stop: the current root and what the last run cost."""
    now = all_stats(s.vm)
    s.mmu_stats_prev, s.mmu_stats_at_stop = s.mmu_stats_at_stop, now
    prev = s.mmu_stats_prev
    v = s.vm.vcpus[s.current]
    if getattr(v, "mmu", None) is None:
        return []
    root = v.mmu.root.sp
    where = f"root #{root.number} hpa {root.hpa:#x} refs {root.root_count}" if root else "no root loaded"
    live = sum(1 for r in roots_of(s.vm) if not r.invalid)
    d = {k: now.get(k, 0) - prev.get(k, 0) for k in ("exits", "ept_violations", "roots_allocated",
                                                      "sptes_zapped", "cycles", "pf_exits")}
    faults = (f"{d['pf_exits']} #PF exits" if is_shadow(s.vm)
              else f"{d['ept_violations']} EPT violations")
    return [f"mmu: {where}; {live} live root(s); since last stop: {d['exits']} exits, "
            f"{faults}, {d['roots_allocated']} roots allocated, "
            f"{d['sptes_zapped']} SPTEs zapped, {d['cycles']} cycles"]



def info_memslots(s, arg: str) -> None:
    """info memslots

    The memslots (KVM_SET_USER_MEMORY_REGION): id, guest frames, host virtual address,
    flags, and the memslot generation.
    """
    slots = list(s.vm.memslots)
    s.message(f"generation {s.vm.memslots.generation}")
    s.message(f"{'slot':>4} {'as':>2} {'base_gfn':>10} {'npages':>8} {'hva':>16}  flags")
    for m in slots:
        s.message(f"{m.id:>4} {m.as_id:>2} {m.base_gfn:>#10x} {m.npages:>8} {m.userspace_addr:>#16x}  "
                  f"{'READONLY' if m.flags & 2 else '-'}")



def info_events(s, arg: str) -> None:
    """info events [-n N] [KIND|NAME]

    The last N (default 20) events in the kernel's trace format, optionally only one
    catch KIND (root-zap, vmexit, ...) or events whose name contains NAME.
    """
    words = arg.split()
    n = 20
    filt = ""
    i = 0
    while i < len(words):
        if words[i] == "-n":
            if i + 1 >= len(words):
                raise usage_error(info_events, "-n needs a number.")
            n = parse_int(words[i + 1])
            i += 2
            continue
        filt = words[i]
        i += 1
    log = list(s.vm.bus.log)
    if filt:
        kind = catchpoints.KINDS.get(filt)
        if kind is not None:
            log = [e for e in log if e.name in kind.events and kind.matches(e, "")]
        else:
            log = [e for e in log if filt in e.name]
    if not log:
        s.message("No events recorded." if not filt else f"No {filt} events recorded.")
        return
    for e in log[-n:]:
        s.message(e.format())


def info_stats(s, arg: str) -> None:
    """info stats [REGEX]

    Counters with KVM's stat names (exits, pf_fixed, remote_tlb_flush, ...) and the
    simulator's own (cycles, roots_allocated, sptes_zapped, ...): the total and the
    change during the last run (between the two most recent stops).
    """
    try:
        rx = re.compile(arg) if arg else None
    except re.error as e:
        raise CommandError(f"Invalid regular expression \"{arg}\": {e}.") from None
    now = all_stats(s.vm)
    prev = getattr(s, "mmu_stats_prev", {})
    names = sorted(k for k, v in now.items() if v or prev.get(k))
    if rx is not None:
        names = [k for k in names if rx.search(k)]
    if not names:
        s.message("No matching counters." if arg else "All counters are zero.")
        return
    s.message(f"{'counter':<22} {'total':>14} {'last run':>12}")
    for k in names:
        s.message(f"{k:<22} {now.get(k, 0):>14} {now.get(k, 0) - prev.get(k, 0):>+12}")


def info_kvm(s, arg: str) -> None:
    """info kvm

    The KVM behaviour profile and the value of every knob.
    """
    p = s.vm.profile
    s.message(f"profile {p.name}: {p.summary}")
    for k, v in p.knobs().items():
        s.message(f"  {k:<30} {str(int(v)) if isinstance(v, bool) else v:<10} {KNOB_HELP[k]}")


def info_costs(s, arg: str) -> None:
    """info costs

    The simulated-time cost table (cycles) and where each number comes from.
    """
    for name, cycles, source in s.vm.costs.rows():
        s.message(f"{name:<16} {cycles:>7}  {source}")


# --- set kvm / set cost ---

def set_kvm(s, arg: str) -> None:
    """set kvm KNOB VALUE

    Change one knob of the running VM's profile. Knobs that decide how the VM is built
    (tdp_enabled, tdp_mmu, cr0_wp_guest_owned, cr4_smep_guest_owned) only take effect
    with --set at start.
    """
    words = arg.split()
    if len(words) != 2:
        raise usage_error(set_kvm)
    knob, value = words
    if knob in s.vm.profile.knobs() and knob not in RUNTIME_KNOBS:
        raise CommandError(f"Knob '{knob}' shapes the VM as it is built; restart with --set {knob}={value}.")
    try:
        s.vm.profile = with_knob(s.vm.profile, f"{knob}={value}")
    except ConfigError as e:
        raise CommandError(str(e)) from None
    s.message(f"{knob} = {value}")


def set_cost(s, arg: str) -> None:
    """set cost NAME CYCLES

    Change one entry of the cost table ("info costs" lists them).
    """
    words = arg.split()
    if len(words) != 2:
        raise usage_error(set_cost)
    name, cycles = words
    n = parse_int(cycles)
    if n < 0:
        raise CommandError("A cost cannot be negative.")
    try:
        s.vm.costs.set(name, n)
    except KeyError:
        raise CommandError(f"No cost named '{name}'; \"info costs\" lists them.") from None
    if name == "tlb_miss":
        for v in s.vm.vcpus:
            v.cpu.walk_cost = n
    s.message(f"cost {name} = {n}")


def _boot_setting(s, key: str, value, shown: str) -> None:
    args = dict(s.boot_args or {})
    args[key] = value
    # Check now, so a bad value is one line here rather than at the next `run`.
    try:
        resolve_machine(args.get("kvm"), args.get("knobs", ()), args.get("vcpus", 1),
                        args.get("mem", "16M"))
    except ConfigError as e:
        raise CommandError(str(e)) from None
    s.boot_args = args
    s.message(f"{shown} (takes effect at the next \"run\" or \"starti\").")


def set_profile(s, arg: str) -> None:
    """set profile NAME

    The KVM profile for the next `run`/`starti` (like --kvm). Knobs given with --set or
    `set knobs` still apply on top.
    """
    if not arg:
        raise usage_error(set_profile, "Argument required (a profile; \"kvmdbg --kvm list\").")
    _boot_setting(s, "kvm", arg.strip(), f"KVM profile {arg.strip()}")


def set_knobs(s, arg: str) -> None:
    """set knobs [KNOB=VALUE ...]

    The --set knobs for the next `run`/`starti`; no argument clears them.
    """
    _boot_setting(s, "knobs", tuple(arg.split()), f"knobs: {arg.strip() or 'none'}")


def set_vcpus(s, arg: str) -> None:
    """set vcpus N

    The number of vCPUs for the next `run`/`starti` (like --vcpus).
    """
    _boot_setting(s, "vcpus", parse_int(arg) if arg else 0, f"{arg.strip()} vCPU(s)")


def set_arg(s, arg: str) -> None:
    """set arg N

    The value placed in RDX at the next `run`/`starti` (like --arg).
    """
    if not arg:
        raise usage_error(set_arg)
    n = parse_int(arg)
    _boot_setting(s, "arg", n, f"RDX = {n:#x}")
    s.arg = n


def register(reg) -> None:
    info = reg.sub("info")
    info.add("memslots", info_memslots, category="mmu")
    info.add("events", info_events, category="mmu", repeatable=True)
    info.add("stats", info_stats, category="mmu")
    info.add("kvm", info_kvm, category="mmu")
    info.add("costs", info_costs, category="mmu")
    st = reg.sub("set")
    st.add("kvm", set_kvm, category="mmu")
    st.add("cost", set_cost, category="mmu")
    st.add("profile", set_profile, category="running")
    st.add("knobs", set_knobs, category="running")
    st.add("vcpus", set_vcpus, category="running")
    st.add("arg", set_arg, category="running")
