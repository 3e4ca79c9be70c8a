"""The debugger process's garbage-collector settings, set once by the command line.

CPython collects its youngest generation every 700 net new container objects, and the
whole heap after ten of the middle one's collections once enough objects survived. A
debugging session keeps much of what it makes (up to 200,000 remembered events, the
reverse-execution log, decoded code), so with those defaults full collections walk an
ever larger heap again and again, and find almost nothing: they took 1.0 s of an 11.4 s
run of 40,000 shadow access-test cases (each one walks the whole heap, 85 ms by then).
Collecting the youngest generation every 10,000 objects instead makes a full collection
rare (none in that run), and leaves cyclic garbage waiting at most a few thousand
objects longer. Benchmarks call this too, so they time what a user's session runs.
"""

import gc

YOUNGEST = 10_000       # CPython's default is 700; the older two keep theirs (10, 10)


def tune() -> None:
    gc.set_threshold(YOUNGEST, 10, 10)
