"""The KVM model's settings, counters and events: info memslots/events/stats/kvm/costs,
set kvm/cost, the boot options of the next run (set profile/knobs/vcpus/arg), event
recording for a session, and the MMU summary line after each stop.
"""

from __future__ import annotations

import re

from kvmdbg.debug.engine import catchpoints
from kvmdbg.debug.commands.mmu import is_shadow, parse_int, roots_of
from kvmdbg.debug.commands.registry import ARG_MAX, ARG_MIN, MAX_COUNT, check_range, usage_error
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
    st["kvmdbg_instructions"] = sum(v.cpu.steps for v in vm.vcpus)
    st["kvmdbg_cycles"] = max(v.cpu.cycles for v in vm.vcpus)
    st["kvmdbg_tlb_misses"] = sum(v.cpu.walks for v in vm.vcpus)
    st["kvmdbg_tlb_entries"] = sum(len(v.cpu.tlb) for v in vm.vcpus)
    st["kvmdbg_live_sptes"] = vm.mmu_pages.live_sptes
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
    d = {k: now.get(k, 0) - prev.get(k, 0)
         for k in ("exits", "kvmdbg_ept_violations", "kvmdbg_roots_allocated",
                   "kvmdbg_sptes_zapped", "kvmdbg_cycles", "kvmdbg_pf_exits")}
    faults = (f"{d['kvmdbg_pf_exits']} #PF exits" if is_shadow(s.vm)
              else f"{d['kvmdbg_ept_violations']} EPT violations")
    return [f"mmu: {where}; {live} live root(s); since last stop: {d['exits']} exits, "
            f"{faults}, {d['kvmdbg_roots_allocated']} roots allocated, "
            f"{d['kvmdbg_sptes_zapped']} SPTEs zapped, {d['kvmdbg_cycles']} cycles"]



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
            n = check_range("info events -n", parse_int(words[i + 1]), 1, MAX_COUNT)
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

    Counters, with the total and the change during the last run (between the two most
    recent stops): KVM's own stats under their kernel names, counted where the kernel
    counts them, so they read as kvm_stat or a KVM_GET_STATS_FD reader would for this
    guest on the profile's kernel; and the simulator's own, all named kvmdbg_*. REGEX
    keeps the names it matches.

    vCPU stats (x86.c's kvm_vcpu_stats_desc), shown summed over the vCPUs as kvm_stat
    shows them, and the function that bumps each one:
      exits                 vcpu_enter_guest: every VM exit (x86.c)
      halt_exits            __kvm_emulate_halt: a HLT exit (x86.c)
      io_exits              handle_io: every I/O instruction exit (vmx.c)
      mmio_exits            x86_emulate_instruction: an emulated access handed to the VMM
      irq_exits             handle_external_interrupt: e.g. the IPI of a kick (vmx.c)
      insn_emulation        x86_decode_emulated_instruction: each instruction KVM decodes
      hypercalls            kvm_emulate_hypercall: every VMCALL (x86.c)
      pf_taken              kvm_mmu_do_page_fault: each fault given to the MMU
      pf_fixed, pf_emulate, pf_spurious
                            kvm_mmu_do_page_fault, by the RET_PF_* the fault handler gives
      pf_mmio_spte_created  tdp_mmu_map_handle_target_level, mmu_set_spte: an MMIO SPTE
      pf_guest              kvm_inject_page_fault: a #PF KVM injects (x86.c)
      tlb_flush             kvm_vcpu_flush_tlb_all, _current and _guest: a served
                            KVM_REQ_TLB_FLUSH, _CURRENT or _GUEST (x86.c), not the flush
                            of kvm_mmu_load, which calls the vendor hook directly
      invlpg                kvm_mmu_invlpg: an INVLPG exit under shadow paging (mmu.c)
    VM stats (kvm_vm_stats_desc and KVM_GENERIC_VM_STATS), counted once per VM:
      remote_tlb_flush_requests
                            kvm_flush_remote_tlbs: every call (kvm_main.c; since v5.15)
      remote_tlb_flush      kvm_flush_remote_tlbs: a call that kicked a vCPU out of guest
                            mode (kvm_make_all_cpus_request sent an IPI)
      mmu_shadow_zapped     __kvm_mmu_prepare_zap_page: per shadow page zapped (mmu.c)
      mmu_cache_miss        kvm_mmu_find_shadow_page: a (gfn, role) hash miss (mmu.c)
      mmu_pte_write         kvm_mmu_track_write: a write to a write-tracked guest table
      mmu_pde_zapped        kvm_mmu_track_write: a non-leaf SPTE zapped by such a write
      mmu_flooded           kvm_mmu_track_write: a page zapped as flooded or misaligned
      mmu_recycled          kvm_mmu_zap_oldest_mmu_pages: pages reclaimed (mmu.c)
      mmu_unsync            kvm_unsync_page, kvm_unlink_unsync_page: unsync pages now
      pages_4k, pages_2m, pages_1g
                            kvm_update_page_stats: present leaf SPTEs of each size now
    Not modelled, so never shown: pf_fast (no fast page faults), the halt polling,
    signal and window exits, nested and other stats.

    The kvmdbg_* counters have no kernel equivalent: simulated cycles (of the vCPU that
    is furthest) and instructions, roots and page-table pages allocated, invalidated and
    freed, SPTEs created and zapped, MMU resets, loads and unloads, INVEPT and INVVPID,
    exits by kind (CR access, EPT violation and misconfiguration, #PF intercepts),
    guest CR writes with or without an exit, memslot changes, the zap worker's cycles,
    prev_roots hits and misses, pages synced, and TLB misses, TLB entries and live
    SPTEs now.
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
    s.message(f"{'counter':<26} {'total':>14} {'last run':>12}")
    for k in names:
        s.message(f"{k:<26} {now.get(k, 0):>14} {now.get(k, 0) - prev.get(k, 0):>+12}")


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
        profile = with_knob(s.vm.profile, f"{knob}={value}")
    except ConfigError as e:
        raise CommandError(str(e)) from None
    s.vm.set_profile(profile)
    from kvmdbg.debug.engine import reverse
    reverse.note_change(s)
    s.message(f"{knob} = {value}")


MAX_COST = 2**32 - 1                # cycles for one event (about 1.4 s at 3 GHz)


def set_cost(s, arg: str) -> None:
    """set cost NAME CYCLES

    Change one entry of the cost table ("info costs" lists them).
    """
    words = arg.split()
    if len(words) != 2:
        raise usage_error(set_cost)
    name, cycles = words
    n = check_range(f"cost {name}", parse_int(cycles), 0, MAX_COST, " cycles")
    try:
        s.vm.costs.set(name, n)
    except KeyError:
        raise CommandError(f"No cost named '{name}'; \"info costs\" lists them.") from None
    if name == "tlb_miss":
        for v in s.vm.vcpus:
            v.cpu.walk_cost = n
    from kvmdbg.debug.engine import reverse
    reverse.note_change(s)
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
    n = check_range("set arg", parse_int(arg), ARG_MIN, ARG_MAX, " (RDX is 64 bits)")
    _boot_setting(s, "arg", n, f"RDX = {n & ARG_MAX:#x}")
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
