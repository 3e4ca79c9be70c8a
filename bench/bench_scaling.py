#!/usr/bin/env python3
"""How cost grows with work (issue #15's scaling table): wall time per SMEP flip as the
working set grows (16, 64, 256, 1,024 pages) and as vCPUs grow (1, 2, 4, 8), under v6.12
and v5.15, and boot time as --mem grows (16 MiB to 1 GiB).

Run: python bench/bench_scaling.py          (about 15 s on the project's 2-core machine)
     python bench/bench_scaling.py --quick  (small parameters: checks the figures run)
Each flip figure is programs/smep_flip.bin with `--arg (pages << 32) | flips` on every
vCPU, timed from boot to the last vCPU's halt, divided by the flips of all vCPUs. Prints
the reference loop (bench/reference_loop.py) and each time divided by the loop's time;
nothing is asserted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference_loop import Reference  # noqa: E402
from kvmdbg import collector  # noqa: E402
from kvmdbg.kvm.boot import boot, load_program  # noqa: E402
from kvmdbg.kvm.profiles import get_profile  # noqa: E402
from kvmdbg.kvm.scheduler import run_vm  # noqa: E402
from kvmdbg.kvm.vm import Vm  # noqa: E402

collector.tune()        # the collector settings of the command line, whose speed this times

PAGES = (16, 64, 256, 1024)
VCPUS = (1, 2, 4, 8)
MEMS = (16 << 20, 64 << 20, 256 << 20, 1 << 30)
# Flips per vCPU for each profile: enough for a steady rate, few enough for v5.15, where
# each flip rebuilds the working set.
FULL = {"v6.12": 4_000, "v5.15": 200, "boots": 3}
QUICK = {"v6.12": 20, "v5.15": 5, "boots": 1}


def per_flip(profile: str, pages: int, vcpus: int, flips: int) -> tuple[float, int]:
    """(seconds per flip, flips done by all vCPUs)."""
    program = load_program(str(ROOT / "programs" / "smep_flip.bin"))
    mem = max(16 << 20, (0x200000 + vcpus * pages * 4096 + (1 << 20)) & ~0xFFFFF)
    vm = Vm(mem, vcpus, profile=get_profile(profile))
    boot(vm, program, pages << 32 | flips)
    t = time.perf_counter()
    run_vm(vm, 10**12)
    total = flips * vcpus
    return (time.perf_counter() - t) / total, total


def boot_time(mem: int, runs: int) -> float:
    program = load_program(str(ROOT / "programs" / "smep_flip.bin"))
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        vm = Vm(mem, 1, profile=get_profile("v6.12"))
        boot(vm, program)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = QUICK if "--quick" in (sys.argv[1:] if argv is None else argv) else FULL
    ref = Reference()
    print(ref.line())
    for profile in ("v6.12", "v5.15"):
        for pages in PAGES:
            sec, total = per_flip(profile, pages, 1, p[profile])
            print(f"{profile:<6} {pages:5,} pages, 1 vCPU:  {sec * 1000:10.4f} ms per flip "
                  f"({total:,} flips) = {ref.loops(sec):,.4f} reference loops")
        for vcpus in VCPUS[1:]:
            sec, total = per_flip(profile, 16, vcpus, p[profile])
            print(f"{profile:<6}    16 pages, {vcpus} vCPUs: {sec * 1000:10.4f} ms per flip "
                  f"({total:,} flips) = {ref.loops(sec):,.4f} reference loops")
    for mem in MEMS:
        sec = boot_time(mem, p["boots"])
        print(f"boot --mem {mem >> 20:>5}M:          {sec * 1000:10.2f} ms (best of {p['boots']}) "
              f"= {ref.loops(sec):,.2f} reference loops")
    print(ref.end_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
