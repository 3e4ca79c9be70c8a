#!/usr/bin/env python3
"""kvm-unit-tests benchmarks: access-test cases per second under v6.12 and shadow (issue
#15's first figures), and the wall time of whole smap, pku and pcid runs per profile.

Run: python bench/bench_kut.py          (about a minute on the project's 2-core machine)
     python bench/bench_kut.py --quick  (small parameters: checks the figures run)
The images come from $KVMDBG_KUT_DIR, else ../shared/kut/bin beside the project. A case is
one call of access.c's ac_test_do_access (ac_test_exec, which runs each case, is inlined):
the time from its first call to the call CASES later, counted by a breakpoint with an
ignore count, as a user would count them. Prints the reference loop's time
(bench/reference_loop.py) and each figure divided by it; nothing is asserted.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference_loop import Reference  # noqa: E402
from kvmdbg import collector  # noqa: E402
from kvmdbg.debug.engine.session import Session  # noqa: E402

collector.tune()        # the collector settings of the command line, whose speed this times

FULL = {"cases": 20_000, "runs": 3, "images": ("smap", "pku", "pcid")}
QUICK = {"cases": 300, "runs": 1, "images": ("pcid",)}
ACCESS_FUNCTION = "ac_test_do_access"


def image(name: str) -> Path | None:
    where = Path(os.environ.get("KVMDBG_KUT_DIR") or ROOT / ".." / "shared" / "kut" / "bin")
    path = where / f"{name}.flat"
    return path if path.is_file() else None


def access_cases(path: Path, kvm: str, cases: int) -> tuple[float, int]:
    """(cases per second, guest instructions per case) over `cases` cases after the first."""
    s = Session.load(str(path), kvm=kvm, out=lambda *_: None)
    s.execute(f"break {ACCESS_FUNCTION}")
    s.execute("continue")
    cpu = s.vm.vcpus[0].cpu
    steps = cpu.steps
    s.execute(f"ignore 1 {cases - 1}")
    t = time.perf_counter()
    s.execute("continue")
    dt = time.perf_counter() - t
    return cases / dt, (cpu.steps - steps) // cases


def whole_run(path: Path, kvm: str) -> tuple[float, int]:
    """(seconds, guest instructions) of `continue` from the multiboot entry to the exit."""
    s = Session.load(str(path), kvm=kvm, out=lambda *_: None)
    t = time.perf_counter()
    s.execute("continue")
    return time.perf_counter() - t, s.vm.vcpus[0].cpu.steps


def main(argv: list[str] | None = None) -> int:
    p = QUICK if "--quick" in (sys.argv[1:] if argv is None else argv) else FULL
    ref = Reference()
    print(ref.line())
    access = image("access_test")
    if access is None:
        print("access test: no access_test.flat in $KVMDBG_KUT_DIR or ../shared/kut/bin")
    else:
        for kvm in ("v6.12", "shadow"):
            # The best of a few runs, as bench_kvm's flips: on a shared machine a slow run
            # measures the neighbours (each run is a fresh session, so the same cases).
            rate, per_case = max(access_cases(access, kvm, p["cases"]) for _ in range(p["runs"]))
            print(f"access test {kvm:<7} {rate:10,.0f} cases/s ({p['cases']:,} cases, "
                  f"{per_case:,} instructions per case; best of {p['runs']}) = "
                  f"{ref.per_loop(rate):,.2f} per reference loop")
    for name in p["images"]:
        path = image(name)
        if path is None:
            print(f"{name}: no {name}.flat")
            continue
        for kvm in ("v6.12", "shadow", "v5.15"):
            seconds, steps = whole_run(path, kvm)
            print(f"{name + '.flat':<10} {kvm:<7} {seconds * 1000:8.0f} ms to its exit ({steps:,} "
                  f"instructions) = {ref.loops(seconds):,.1f} reference loops")
    print(ref.end_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
