"""The recorder's account of snapshot memory (kept as snapshots come and go, since `_thin`
asks for it on every snapshot) against a count made from scratch: every object the
snapshots hold, counted once however many share it. Through appends, thinning under a
small `set record snapshot-memory`, and a future discarded after going back."""

from __future__ import annotations

from tests.reverse.oracle import load

SMEP = "programs/smep_flip.bin"


def _recount(rec) -> int:
    seen, total = set(), 0
    for sn in rec.snapshots:
        parts = [(sn.blob, len(sn.blob))] + [(b, len(b)) for b in sn.pages.values()]
        parts += [(r, 100 * len(r) + 64) for r in getattr(sn, "ept", {}).values()]
        for obj, size in parts:
            if id(obj) not in seen:
                seen.add(id(obj))
                total += size
    return total


def test_the_running_account_matches_a_recount_through_thinning_and_a_new_future():
    s = load(SMEP, "v5.15")
    rec = s.recorder
    rec.interval = 20_000
    counts = []
    for i in range(12):
        s.step(400)
        assert rec.memory() == _recount(rec)
        counts.append(len(rec.snapshots))
        if i == 5:
            rec.memory_limit = rec.memory() // 2          # thinning from here on
    assert max(counts) > 3 and rec.interval > 20_000      # it took several, and thinned
    s.goto(2000)
    s.execute("set $rbx = 7")                             # discards the future
    assert rec.memory() == _recount(rec)
    s.step(500)
    assert rec.memory() == _recount(rec) > 0
