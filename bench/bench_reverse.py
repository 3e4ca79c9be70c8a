#!/usr/bin/env python3
"""Reverse-execution benchmarks (issue #17): a reverse-stepi at the end of a long run, a
reverse-continue to the previous root zap in a long v5.15 flip run, and the memory the
snapshots hold per million instructions of history.

Run: python bench/bench_reverse.py          (10 M instructions, 100,000 flips: minutes)
     python bench/bench_reverse.py --quick  (small parameters: checks the figures run)
Prints the reference loop's time (bench/reference_loop.py) and each time divided by it;
nothing is asserted. Issue #17's targets: reverse-stepi under 0.5 s at step 10 M,
reverse-continue under 2 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference_loop import Reference  # noqa: E402
from kvmdbg import collector  # noqa: E402
from kvmdbg.debug.engine.session import Session  # noqa: E402

collector.tune()        # the collector settings of the command line, whose speed this times

FULL = {"steps": 10_000_000, "flips": 100_000}
QUICK = {"steps": 200_000, "flips": 2_000}
PROGRAM = str(ROOT / "programs" / "smep_flip.bin")


def long_run(steps: int):
    """smep_flip under v6.12 (it keeps its root) run for `steps` instructions."""
    s = Session.load(PROGRAM, kvm="v6.12", arg=steps)
    s.run(max_steps=steps)
    return s


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = QUICK if "--quick" in (sys.argv[1:] if argv is None else argv) else FULL
    ref = Reference()
    print(ref.line())
    s = long_run(p["steps"])
    at = s.cpu.steps
    rec = s.recorder
    seconds = timed(lambda: s.reverse_step(1))
    print(f"reverse-stepi at step {at:,} (v6.12): {seconds * 1000:8.0f} ms = "
          f"{ref.loops(seconds):,.1f} reference loops")
    mem = rec.memory()
    print(f"snapshot memory: {mem / (at / 1e6):,.0f} bytes per million instructions "
          f"({len(rec.snapshots)} snapshots, {mem / (1 << 20):,.1f} MiB for {at:,} instructions)")
    z = Session.load(PROGRAM, kvm="v5.15", arg=p["flips"])
    z.run()                              # every flip, to the halt
    z.execute("catch root-zap")
    end = z.cpu.steps
    seconds = timed(lambda: z.reverse_continue())
    print(f"reverse-continue to the previous root zap after {p['flips']:,} flips ({end:,} "
          f"instructions, v5.15, to step {z.cpu.steps:,}): {seconds * 1000:8.0f} ms = "
          f"{ref.loops(seconds):,.1f} reference loops")
    print(ref.end_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
