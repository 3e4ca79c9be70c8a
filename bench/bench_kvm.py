#!/usr/bin/env python3
"""KVM-model benchmarks: SMEP flips per second (v5.15, v6.1, v6.12), SPTEs zapped per
second, bytes per SPTE, and under shadow paging SMEP flips and guest page faults handled
per second.

Run: python bench/bench_kvm.py        (about a minute on the project's 2-core machine)
Prints one line per figure, flip rates as the best of 3 runs; nothing is asserted
(targets live in the README).
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmdbg.mmu import mmu as M  # noqa: E402
from kvmdbg.kvm.boot import Program, boot, load_program  # noqa: E402
from kvmdbg.kvm.profiles import get_profile  # noqa: E402
from kvmdbg.kvm.scheduler import run_vm  # noqa: E402
from kvmdbg.kvm.vm import Vm  # noqa: E402

# mov rbx, rdx; mov rax, cr4; l: xor rax, 1 << 20; mov cr4, rax; dec rbx; jnz l; hlt
BARE_FLIP_LOOP = bytes.fromhex("4889d30f20e04835000010000f22e048ffcb75f2f4")
# mov rsi, 0x400000; mov rcx, rdx; l: mov [rsi], rcx; add rsi, 4096; dec rcx; jnz l; hlt
# (one write to each of RDX fresh pages: under shadow paging each is a #PF exit that KVM
# fixes by walking the guest tables and installing a shadow SPTE)
TOUCH_LOOP = bytes.fromhex("48c7c600004000" "4889d1" "48890e" "4881c600100000" "48ffc9" "75f1" "f4")


def flips_per_second(profile: str, program: Program, flips: int) -> float:
    vm = Vm(16 << 20, 1, profile=get_profile(profile))
    boot(vm, program, flips)
    t = time.perf_counter()
    run_vm(vm, 10**12)
    dt = time.perf_counter() - t
    exits = vm.stats["kvmdbg_cr_exits"]
    assert exits == flips or exits == 0, exits
    return flips / dt


def best_of(runs: int, measure, *args) -> float:
    """The best of a few runs: on a shared machine a slow run measures the neighbours."""
    return max(measure(*args) for _ in range(runs))


def shadow_faults_per_second(pages: int = 20_000) -> float:
    """#PF exits handled (guest walk + FNAME(fetch) + re-entry) per second under shadow."""
    vm = Vm(1 << 30, 1, profile=get_profile("shadow"))
    boot(vm, Program(TOUCH_LOOP), pages)
    t = time.perf_counter()
    run_vm(vm, 10**12)
    dt = time.perf_counter() - t
    assert vm.stats["pf_fixed"] >= pages, vm.stats["pf_fixed"]
    return vm.stats["kvmdbg_pf_exits"] / dt


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


def zap_rate(npages: int = 65536) -> float:
    vm, v = _entered_vm()
    _map(v, npages)
    before = vm.stats["kvmdbg_sptes_zapped"]
    t = time.perf_counter()
    vm.tdp_mmu.zap_root(v.mmu.root.sp, payer=v)
    dt = time.perf_counter() - t
    return (vm.stats["kvmdbg_sptes_zapped"] - before) / dt


def bytes_per_spte(npages: int = 65536) -> float:
    vm, v = _entered_vm()
    # Fault the guest pages' host pages in first: guest RAM is not SPTE memory.
    for gfn in range(0x1000, 0x1000 + npages):
        vm.host.hva_to_pfn(vm.memslots.lookup(gfn).gfn_to_hva(gfn))
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    before = vm.tdp_mmu.live_sptes
    _map(v, npages)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (used - base) / (vm.tdp_mmu.live_sptes - before)


def main() -> int:
    smep = load_program(str(ROOT / "programs" / "smep_flip.bin"))
    bare = Program(BARE_FLIP_LOOP)
    for profile in ("v5.15", "v6.1", "v6.12"):
        rate = best_of(3, flips_per_second, profile, bare, 100_000 if profile == "v6.12" else 3_000)
        print(f"{profile:6} bare flip loop:          {rate:10,.0f} SMEP flips/s")
        rate = best_of(3, flips_per_second, profile, smep, 20_000 if profile == "v6.12" else 1_000)
        print(f"{profile:6} 16-page working set:     {rate:10,.0f} SMEP flips/s")
    rate = best_of(3, flips_per_second, "shadow", bare, 50_000)
    print(f"shadow bare flip loop:          {rate:10,.0f} SMEP flips/s")
    rate = best_of(3, flips_per_second, "shadow", smep, 10_000)
    print(f"shadow 16-page working set:     {rate:10,.0f} SMEP flips/s")
    print(f"shadow guest page faults:       {shadow_faults_per_second():10,.0f} #PF exits handled/s")
    print(f"TDP MMU zap:                    {zap_rate():10,.0f} SPTEs zapped/s")
    print(f"TDP MMU memory:                 {bytes_per_spte():10.1f} bytes per SPTE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
