#!/usr/bin/env python3
"""KVM-model benchmarks: SMEP flips per second (v5.15, v6.1, v6.12), SPTEs zapped per
second, bytes per SPTE, and under shadow paging SMEP flips and guest page faults handled
per second.

Run: python bench/bench_kvm.py          (about 15 s on the project's 2-core machine)
     python bench/bench_kvm.py --quick  (small parameters, one run each: checks the figures run)
Prints the reference loop's time (bench/reference_loop.py), then one line per figure with
the work it measured and, for speeds, the figure divided by the reference loop's. Flip rates
are the best of 3 runs; nothing is asserted (targets live in the README).
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference_loop import Reference  # noqa: E402
from kvmdbg import collector  # noqa: E402
from kvmdbg.kvm.boot import Program, boot, load_program  # noqa: E402
from kvmdbg.kvm.profiles import get_profile  # noqa: E402
from kvmdbg.kvm.scheduler import run_vm  # noqa: E402
from kvmdbg.kvm.vm import Vm  # noqa: E402
from kvmdbg.mmu import mmu as M  # noqa: E402

collector.tune()        # the collector settings of the command line, whose speed this times

# mov rbx, rdx; mov rax, cr4; l: xor rax, 1 << 20; mov cr4, rax; dec rbx; jnz l; hlt
BARE_FLIP_LOOP = bytes.fromhex("4889d30f20e04835000010000f22e048ffcb75f2f4")
# mov rsi, 0x400000; mov rcx, rdx; l: mov [rsi], rcx; add rsi, 4096; dec rcx; jnz l; hlt
# (one write to each of RDX fresh pages: under shadow paging each is a #PF exit that KVM
# fixes by walking the guest tables and installing a shadow SPTE)
TOUCH_LOOP = bytes.fromhex("48c7c600004000" "4889d1" "48890e" "4881c600100000" "48ffc9" "75f1" "f4")


# The counters read here, in one place (pf_fixed is KVM's stat; the others kvmdbg's own).
CR4_WRITES, PF_EXITS = "kvmdbg_cr4_writes", "kvmdbg_pf_exits"
PF_FIXED, SPTES_ZAPPED = "pf_fixed", "kvmdbg_sptes_zapped"


@dataclass
class FlipRun:
    rate: float            # flips per second
    flips: int             # the guest's parameter
    cr4_writes: int        # what the VM saw
    instructions: int


def flip_run(profile: str, program: Program, flips: int) -> FlipRun:
    vm = Vm(16 << 20, 1, profile=get_profile(profile))
    boot(vm, program, flips)
    t = time.perf_counter()
    run_vm(vm, 10**12)
    dt = time.perf_counter() - t
    return FlipRun(flips / dt, flips, vm.stats[CR4_WRITES], sum(v.cpu.steps for v in vm.vcpus))


def best_of(runs: int, measure, *args):
    """The best of a few runs: on a shared machine a slow run measures the neighbours."""
    return max((measure(*args) for _ in range(runs)), key=lambda r: r.rate)


@dataclass
class FaultRun:
    rate: float            # #PF exits handled per second
    pages: int             # fresh pages the guest writes
    pf_exits: int
    pf_fixed: int


def shadow_faults(pages: int = 20_000) -> FaultRun:
    """#PF exits handled (guest walk + FNAME(fetch) + re-entry) per second under shadow."""
    vm = Vm(1 << 30, 1, profile=get_profile("shadow"))
    boot(vm, Program(TOUCH_LOOP), pages)
    t = time.perf_counter()
    run_vm(vm, 10**12)
    dt = time.perf_counter() - t
    return FaultRun(vm.stats[PF_EXITS] / dt, pages, vm.stats[PF_EXITS], vm.stats[PF_FIXED])


def _entered_vm():
    """A 1 GiB VM under v6.12 whose vCPU has entered once (so a root is loaded)."""
    vm = Vm(1 << 30, 1, profile=get_profile("v6.12"))
    boot(vm, Program(b"\xf4"))
    v = vm.vcpus[0]
    vm.current = v
    v.enter_guest()
    return vm, v


def _map(v, npages: int) -> None:
    """Map npages 4 KiB pages through the real fault path."""
    for gfn in range(0x1000, 0x1000 + npages):
        M.kvm_mmu_page_fault(v, gfn << 12, 2)


@dataclass
class ZapRun:
    rate: float            # SPTEs zapped per second
    pages: int             # 4 KiB pages mapped before the zap
    created: int           # live SPTEs in the root just before the zap
    zapped: int
    left: int              # live SPTEs after it


def zap(npages: int = 65536) -> ZapRun:
    vm, v = _entered_vm()
    _map(v, npages)
    before, created = vm.stats[SPTES_ZAPPED], vm.mmu_pages.live_sptes
    t = time.perf_counter()
    vm.tdp_mmu.zap_root(v.mmu.root.sp, payer=v)
    dt = time.perf_counter() - t
    zapped = vm.stats[SPTES_ZAPPED] - before
    return ZapRun(zapped / dt, npages, created, zapped, vm.mmu_pages.live_sptes)


def sptes_and_bytes(npages: int = 65536) -> tuple[int, float]:
    """(SPTEs the mapping created, host bytes allocated per SPTE)."""
    vm, v = _entered_vm()
    # Fault the guest pages' host pages in first: guest RAM is not SPTE memory.
    for gfn in range(0x1000, 0x1000 + npages):
        vm.host.hva_to_pfn(vm.memslots.lookup(gfn).gfn_to_hva(gfn))
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    before = vm.mmu_pages.live_sptes
    _map(v, npages)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sptes = vm.mmu_pages.live_sptes - before
    return sptes, (used - base) / sptes


# The parameters of a run: flips per profile and program, runs per flip figure, pages.
FULL = {"runs": 3, "bare": {"v5.15": 3_000, "v6.1": 3_000, "v6.12": 100_000, "shadow": 50_000},
        "smep": {"v5.15": 1_000, "v6.1": 1_000, "v6.12": 20_000, "shadow": 10_000},
        "fault_pages": 20_000, "zap_pages": 65536}
QUICK = {"runs": 1, "bare": {"v5.15": 30, "v6.1": 30, "v6.12": 300, "shadow": 200},
         "smep": {"v5.15": 5, "v6.1": 5, "v6.12": 40, "shadow": 20},
         "fault_pages": 300, "zap_pages": 600}


def main(argv: list[str] | None = None) -> int:
    p = QUICK if "--quick" in (sys.argv[1:] if argv is None else argv) else FULL
    ref = Reference()
    print(ref.line())
    programs = {"bare": ("bare flip loop:", Program(BARE_FLIP_LOOP)),
                "smep": ("16-page working set:", load_program(str(ROOT / "programs" / "smep_flip.bin")))}
    for profile in ("v5.15", "v6.1", "v6.12", "shadow"):
        for kind, (label, program) in programs.items():
            r = best_of(p["runs"], flip_run, profile, program, p[kind][profile])
            print(f"{profile:6} {label:<24} {r.rate:10,.0f} SMEP flips/s ({r.flips:,} flips: "
                  f"{r.cr4_writes:,} CR4 writes, {r.instructions:,} instructions; best of {p['runs']}) "
                  f"= {ref.per_loop(r.rate):,.1f} per reference loop")
    f = shadow_faults(p["fault_pages"])
    print(f"shadow guest page faults:       {f.rate:10,.0f} #PF exits handled/s ({f.pages:,} pages: "
          f"{f.pf_exits:,} #PF exits, {f.pf_fixed:,} fixed) = {ref.per_loop(f.rate):,.1f} per reference loop")
    z = zap(p["zap_pages"])
    print(f"TDP MMU zap:                    {z.rate:10,.0f} SPTEs zapped/s ({z.pages:,} pages: "
          f"{z.created:,} SPTEs, {z.zapped:,} zapped, {z.left:,} left) "
          f"= {ref.per_loop(z.rate):,.1f} per reference loop")
    sptes, per = sptes_and_bytes(p["zap_pages"])
    print(f"TDP MMU memory:                 {per:10.1f} bytes per SPTE ({sptes:,} SPTEs)")
    print(ref.end_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
