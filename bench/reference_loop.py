"""The fixed pure-Python reference loop that every benchmark times in the same run.

The project's machine is shared and its speed drifts (the README: benchmark runs in slow
spells were up to a third lower). So each benchmark prints, before its figures, how long
this loop took in the same process, and after each speed figure that figure divided by the
loop's: a rate (work per second) divided by the loop's rate (one loop per its time) is the
work done in the time of one reference loop, and a time divided by the loop's time is a
number of reference loops. Either way the machine's speed of the moment mostly cancels, so
figures from a quiet and a busy spell can be compared. Figures that are not speeds (bytes
per page, bytes per SPTE) are not divided. The loop is timed again after the figures: if the
two times differ much, the machine's speed changed during the run and the ratios of the
figures measured in between are less sure.
"""

from __future__ import annotations

import time

ITERATIONS = 300_000
RUNS = 3


def reference_loop(iterations: int = ITERATIONS) -> int:
    """Integer arithmetic in a Python loop: what the interpreter's hot path is made of."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) & 0xFFFFFFFF
    return x


class Reference:
    """The loop's best time of RUNS in this process, and the ratios against it."""

    def __init__(self, runs: int = RUNS):
        self.runs = runs
        self.seconds = self._best()

    def _best(self) -> float:
        best = float("inf")
        for _ in range(self.runs):
            t = time.perf_counter()
            reference_loop()
            best = min(best, time.perf_counter() - t)
        return best

    def line(self) -> str:
        return (f"reference loop:   {self.seconds * 1000:10.1f} ms (a fixed pure-Python loop of "
                f"{ITERATIONS:,} iterations, best of {self.runs}, in this run)")

    def end_line(self) -> str:
        """The loop timed again, after the figures."""
        again = self._best()
        return (f"reference loop at the end: {again * 1000:.1f} ms "
                f"({(again / self.seconds - 1) * 100:+.0f}% from the start)")

    def per_loop(self, rate: float) -> float:
        """A rate (per second) divided by the loop's rate: the work done in one loop's time."""
        return rate * self.seconds

    def loops(self, seconds: float) -> float:
        """A time divided by the loop's time."""
        return seconds / self.seconds
