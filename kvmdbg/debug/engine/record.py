"""Execution history: snapshots plus a log of run calls, replayed to go back in time.

kvmdbg is deterministic, so history needs no per-instruction record. The Recorder
logs every call that runs guest code (Vcpu.run, and Vm.run_worker_item outside one)
with its arguments and what it retired; a call's result depends only on the state
before it, so replaying the same calls from a snapshot gives the same states, with
the scheduler's choices exactly as they were (the log *is* the schedule). A point in
history is a Position: entries applied, instructions retired into the next one, and
the event sequence number a catchpoint stopped at (a stop in the middle of an exit).

A snapshot pickles the whole Vm graph. Host pages are kept apart, by pfn, and each
one is shared with the previous snapshot when its bytes are equal (compared at
snapshot time: no hook on the CPU's write fast paths is needed, and a snapshot
costs only the pages that changed). Caches are not pickled: restoring builds them
empty (cpu/cpu.py lists them), so nothing stale comes back. Debugger objects
(breakpoints, the session) are shared, not copied: history moves the machine only.
Breakpoint hit counts are not rewound (gdb keeps them too when reversing).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import NamedTuple

from kvmdbg.cpu.decode_cache import DecodeCache
from kvmdbg.mem.host_memory import _Pages
from kvmdbg.stop_reason import BREAKPOINT, CATCHPOINT, HALTED, SHUTDOWN, STEP_LIMIT

# Snapshots are spaced in simulated cycles, not instructions: replay time follows the
# work done (a v5.15 flip costs a thousand cycles and as much Python), and cycles/s stays
# within a few times across profiles while instructions/s differs forty times.
FIRST_INTERVAL = 2_000_000     # cycles (all vCPUs) between snapshots while history is short
MAX_SNAPSHOTS = 256            # more: every other old one goes and the spacing doubles
DEFAULT_MEMORY = 256 << 20     # `set record snapshot-memory`
NO_HISTORY = "No more reverse-execution history."


class Position(NamedTuple):
    """entries applied, instructions into the next entry, catch event seq (0: none);
    ordered as the tuple (a NamedTuple: one is made for every logged run call)."""
    entry: int
    inside: int = 0
    seq: int = 0


@dataclass(slots=True)
class Entry:
    """One logged run call. vcpu -1: a worker item. catch: (event seq, cpu index) of
    the catchpoint request that ended it, or None."""
    vcpu: int
    n: int = 0
    bps: frozenset | None = None
    skip: bool = True
    single: bool = False
    retired: int = 0
    reason: str = ""
    catch: tuple | None = None
    tick: int = 0                  # total instructions retired before it


@dataclass
class Snapshot:
    entry: int                     # entries applied when it was taken
    tick: int
    blob: bytes
    pages: dict                    # pfn -> bytes
    barrier: bool = False          # taken after a state change: never thinned, never crossed


class _Pickler(pickle.Pickler):
    def __init__(self, f, ids):
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.ids = ids

    def persistent_id(self, obj):
        return self.ids.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, shared, pages, events, listeners, ept, reuse):
        super().__init__(f)
        self.listeners = listeners
        self.ept = ept
        self.reuse = reuse
        self.shared = shared
        self.pages = pages
        self.events = events
        self.made: dict = {}

    def persistent_load(self, pid):
        kind, key = pid
        if kind == "page":
            return self.pages[key]
        if kind == "shared":
            return self.shared[key]
        if kind == "listeners":
            return self.listeners
        if kind == "ept":
            got = self.made.get(pid)
            if got is None:
                got = self.made[pid] = self.reuse.get(key)
            if got is None:
                pages = self.pages
                got = self.made[pid] = {gfn: (None if pfn is None else pages[pfn], hpa, w, x)
                                        for gfn, (pfn, hpa, w, x) in self.ept[key].items()}
            return got
        if kind == "events":
            log = self.events
            while log and log[-1].seq > key:
                log.pop()
            return log
        got = self.made.get(pid)
        if got is None:
            got = self.made[pid] = {"dict": dict, "pages": lambda: _Pages(None),
                                    "decode": DecodeCache, "none": lambda: None}[kind]()
        return got


def _cache_ids(vm) -> dict:
    """Caches, by object id, with what restoring them makes (an empty one)."""
    ids = {id(vm._gfn_cache): ("dict", id(vm._gfn_cache)),
           id(vm.decode_cache): ("decode", 0)}
    for v in vm.vcpus:
        c = v.cpu
        for name in ("fast_r", "fast_w", "fast_x", "fast_implicit", "_fast_large", "icache", "bcache",
                     "_x_keys", "_modes"):
            d = getattr(c, name, None)
            if d is not None:
                ids[id(d)] = ("dict", id(d))
        if c._mode is not None:
            ids[id(c._mode)] = ("none", 0)
        ept = getattr(v, "ept", None)
        if ept is not None:
            ids[id(ept.memo)] = ("dict", id(ept.memo))
            ids[id(ept.prefixes)] = ("dict", id(ept.prefixes))
    return ids


class Recorder:
    """The history of one VM (a new one after `run`)."""

    def __init__(self, session):
        self.s = session
        self.vm = None
        self.log: list[Entry] = []
        # id -> [snapshots holding it, its size, the object] for what snapshots hold, and
        # the sum of the sizes: memory() is asked on every snapshot (_thin), and summing
        # every page of every snapshot each time made a long recording quadratic.
        self._held: dict[int, list] = {}
        self._held_bytes = 0
        self._snapshots: list[Snapshot] = []
        self.pos = Position(0)
        self.depth = 0                  # inside a logged call: nested ones are part of it
        self.replaying = False          # running the log, not the guest's own future
        self.interval = FIRST_INTERVAL
        self.memory_limit = DEFAULT_MEMORY
        self.stop_seq = None            # (seq, cpu): request a catch stop at that event
        self._ept_memo: dict = {}       # (vcpu, ep4ta) -> (cache dict, its length, stored form)
        self.shared: dict = {}

    # --- attaching ---

    def attach(self, vm) -> None:
        self.vm = vm
        vm.recorder = self
        # Events are numbered only while someone listens: listen always, so their
        # numbers (and the log) do not depend on which catchpoints exist while replaying.
        vm.bus.subscribe(self._on_event)
        self.log = []
        self.snapshots = []
        self.pos = Position(0)
        self.interval = FIRST_INTERVAL
        self.snapshot(barrier=True)

    def _on_event(self, ev) -> None:
        st = self.stop_seq
        if st is not None and ev.seq == st[0]:
            self.vm.vcpus[st[1]].cpu.request_stop(CATCHPOINT)

    # --- where we are ---

    def ticks(self) -> int:
        vcpus = self.vm.vcpus
        if len(vcpus) == 1:                 # every logged run call asks
            return vcpus[0].cpu.steps
        return sum(v.cpu.steps for v in vcpus)

    @property
    def end(self) -> Position:
        return Position(len(self.log))

    def at_end(self) -> bool:
        p = self.pos
        return p.entry == len(self.log) and not p.inside and not p.seq

    # --- recording (the hooks in Vcpu.run and Vm.run_worker_item) ---

    def run(self, v, n: int, bps, skip: bool) -> str:
        if self.depth or self.replaying:
            return v._run(n, bps, skip)
        self._go_live()
        self._maybe_snapshot()
        cpu = v.cpu
        e = Entry(v.index, n, frozenset(bps) if bps else None, skip, cpu.stepping_singly(),
                  tick=self.ticks())
        steps = cpu.steps
        caught = len(self.s.breakpoints.caught)
        self.depth += 1
        try:
            e.reason = v._run(n, e.bps, skip)
        finally:
            self.depth -= 1
            e.retired = cpu.steps - steps
            if e.reason == CATCHPOINT:
                e.catch = self._catch_request(caught)
            self.log.append(e)
            self.pos = self.end
        return e.reason

    def worker(self, vm) -> None:
        if self.depth or self.replaying:
            return vm._run_worker_item()
        self._go_live()
        e = Entry(-1, tick=self.ticks())
        self.depth += 1
        try:
            vm._run_worker_item()
        finally:
            self.depth -= 1
            self.log.append(e)
            self.pos = self.end

    def _catch_request(self, before: int):
        """Which event asked for the stop, and on which vCPU (as the table asks)."""
        caught = self.s.breakpoints.caught
        if len(caught) <= before and caught:
            before = 0
        if len(caught) <= before:
            return None
        ev = caught[before][1]
        n = len(self.vm.vcpus)
        return ev.seq, ev.vcpu if 0 <= ev.vcpu < n else self.s.current

    def _go_live(self) -> None:
        """Guest code runs from a point in the past: its future is replaced."""
        if not self.at_end():
            self.discard_future()

    def discard_future(self) -> None:
        """Forget the history after the current point (it is no longer what happens)."""
        p = self.pos
        keep = self.log[:p.entry]
        if p.inside or p.seq:
            e = self.log[p.entry]
            cut = Entry(e.vcpu, p.inside, e.bps, e.skip, e.single, p.inside,
                        CATCHPOINT if p.seq else STEP_LIMIT,
                        (p.seq, e.catch[1] if e.catch else e.vcpu) if p.seq else None, e.tick)
            keep.append(cut)
        self.log = keep
        last = p.entry                  # a snapshot after the cut call is of the old future
        self.snapshots = [sn for sn in self.snapshots if sn.entry <= last]
        self.pos = self.end

    def changed(self) -> None:
        """The debugger changed the machine (a register or memory write, `set kvm`):
        the future after this point is gone, and this state starts a new stretch."""
        if not self.at_end():
            self.discard_future()
            self.s.message("Discarding the execution history after this point.")
        self.snapshot(barrier=True)

    # --- snapshots ---

    def clock(self) -> int:
        vcpus = self.vm.vcpus
        if len(vcpus) == 1:                 # every logged run call asks
            return vcpus[0].cpu.cycles
        return sum(v.cpu.cycles for v in vcpus)

    def _maybe_snapshot(self) -> None:
        if self.clock() - self.snapshots[-1].clock >= self.interval:
            self.snapshot()

    def snapshot(self, barrier: bool = False) -> Snapshot:
        vm = self.vm
        ids = _cache_ids(vm)
        host = vm.host
        ids[id(host.pages)] = ("pages", 0)
        prev = self.snapshots[-1].pages if self.snapshots else {}
        pages = {}
        for pfn, page in host.pages.items():
            ids[id(page)] = ("page", pfn)
            old = prev.get(pfn)
            pages[pfn] = old if old is not None and old == page else bytes(page)
        # The event log only grows: a snapshot keeps its length (the last seq), and
        # restoring cuts the live log back to it (replay appends the same events again).
        ids[id(vm.bus.log)] = ("events", vm.bus.seq)
        ids[id(vm.bus._listeners)] = ("listeners", 0)     # the debugger's, not history
        self._share(vm, ids)
        ept = self._ept_caches(vm, ids)
        f = io.BytesIO()
        _Pickler(f, ids).dump(vm)
        sn = Snapshot(len(self.log), self.ticks(), f.getvalue(), pages, barrier)
        sn.ept = ept
        sn.clock = self.clock()
        sn.session = (self.s.current, self.s.last_stop, self.s.last_event,
                      getattr(self.s, "console_pending", ""))
        if self.snapshots and self.snapshots[-1].entry == sn.entry:
            if self.snapshots[-1].barrier and not barrier:
                return self.snapshots[-1]
            self.snapshots = self.snapshots[:-1] + [sn]
        else:
            self.snapshots = self.snapshots + [sn]
        self._thin()
        return sn

    def _ept_caches(self, vm, ids) -> dict:
        """The EPT-tagged guest-physical caches, kept apart like pages: one per EP4TA, and
        KVM versions that free roots leave one behind per root (v5.15: one per CR4 flip),
        unchanged from then on. Each is stored as {gfn: (pfn, hpa, w, x)}, and one that
        did not change since the last snapshot is the same object (not pickled again)."""
        out = {}
        live = set()
        for v in vm.vcpus:
            ept = getattr(v, "ept", None)
            if ept is None:
                continue
            for ep4ta in ept.loaded | {ept.ep4ta}:      # the caches that may have changed
                self._ept_memo.pop((v.index, ep4ta), None)
            ept.loaded.clear()
            for ep4ta, d in ept.caches.items():
                key = (v.index, ep4ta)
                live.add(key)
                memo = self._ept_memo.get(key)
                # Only the current EP4TA's cache can change without changing its length.
                if memo is not None and memo[0] is d and memo[1] == len(d):
                    rep = memo[2]
                else:
                    rep = {}
                    for gfn, (page, hpa, w, x) in d.items():
                        pid = None if page is None else ids.get(id(page))
                        if page is not None and pid is None:
                            rep = None          # a page the host no longer has: pickle it
                            break
                        rep[gfn] = (None if pid is None else pid[1], hpa, w, x)
                    if rep is None:
                        continue
                    if d is not ept.cache:
                        pfns = frozenset(e[0] for e in rep.values() if e[0] is not None)
                        self._ept_memo[key] = (d, len(d), rep, pfns)
                ids[id(d)] = ("ept", key)
                out[key] = rep
        for key in [k for k in self._ept_memo if k not in live]:
            del self._ept_memo[key]
        return out

    def _share(self, vm, ids) -> None:
        """Debugger objects reachable from the VM (bus listeners, the console sink)."""
        todo = [self, vm.console_sink, *vm.bus._listeners, *(v.cpu.decoder for v in vm.vcpus)]
        for obj in todo:
            owner = getattr(obj, "__self__", obj)
            key = ("obj", id(owner))
            self.shared[key] = owner
            ids[id(owner)] = ("shared", key)

    @property
    def snapshots(self) -> list:
        """The snapshots, oldest first. Assign a new list to change them (never mutate it in
        place): the setter keeps memory()'s account of what they hold."""
        return self._snapshots

    @snapshots.setter
    def snapshots(self, new: list) -> None:
        old = self._snapshots
        new = list(new)
        kept = {id(sn) for sn in new}
        for sn in old:
            if id(sn) not in kept:
                self._account(sn, -1)
        had = {id(sn) for sn in old}
        for sn in new:
            if id(sn) not in had:
                self._account(sn, 1)
        self._snapshots = new

    def _account(self, sn: Snapshot, delta: int) -> None:
        held = self._held
        parts = [(sn.blob, len(sn.blob))] + [(b, len(b)) for b in sn.pages.values()]
        parts += [(rep, 100 * len(rep) + 64)                 # a dict entry and its tuple, about
                  for rep in getattr(sn, "ept", {}).values()]
        for obj, size in parts:
            got = held.get(id(obj))
            if delta > 0:
                if got is None:
                    held[id(obj)] = [1, size, obj]
                    self._held_bytes += size
                else:
                    got[0] += 1
            else:
                got[0] -= 1
                if not got[0]:
                    del held[id(obj)]
                    self._held_bytes -= got[1]

    def memory(self) -> int:
        """Bytes the snapshots hold (pages shared between snapshots counted once)."""
        return self._held_bytes

    def _thin(self) -> None:
        """Keep the count and the memory bounded: drop every other old snapshot (never
        the first, a barrier or the newest) and space new ones twice as far."""
        while len(self.snapshots) > MAX_SNAPSHOTS or (
                len(self.snapshots) > 2 and self.memory() > self.memory_limit):
            keep = []
            for i, sn in enumerate(self.snapshots):
                if sn.barrier or i == len(self.snapshots) - 1 or i % 2 == 0:
                    keep.append(sn)
            if len(keep) == len(self.snapshots):
                break
            self.snapshots = keep
            self.interval *= 2

    def restore(self, sn: Snapshot) -> None:
        s = self.s
        # The live VM is dropped: its page objects take the snapshot's bytes and serve the
        # restored one, so the EPT caches it left unchanged can serve it too (below).
        old = self.vm.host.pages
        pages = {}
        replaced = set()
        for pfn, b in sn.pages.items():
            page = dict.get(old, pfn)
            if page is None:
                page = bytearray(b)
                replaced.add(pfn)
            elif page != b:
                page[:] = b
            pages[pfn] = page
        reuse = {}
        for key, rep in sn.ept.items():
            memo = self._ept_memo.get(key)
            if memo is not None and memo[2] is rep and len(memo[0]) == memo[1] and \
                    not memo[3] & replaced:
                reuse[key] = memo[0]
        live = self.vm.bus
        vm = _Unpickler(io.BytesIO(sn.blob), self.shared, pages, live.log, live._listeners,
                          sn.ept, reuse).load()
        vm.bus.active = bool(vm.bus._listeners) or vm.bus.keep > 0
        host_pages = vm.host.pages
        host_pages._owner = vm.host
        host_pages.update(pages)
        dc = vm.decode_cache
        for v in vm.vcpus:
            c = v.cpu
            c.decode_cache = dc
            dc.attach(c)
            c._mode = None
            c._memo_pt_gen = c._memo_gpa_gen = None
            ept = getattr(v, "ept", None)
            if ept is not None:
                ept.memo_gen = None
        vm._gfn_cache_generation = -1
        vm.recorder = self
        self.vm = vm
        s.vm = vm
        s.current, s.last_stop, s.last_event, s.console_pending = sn.session
        self.pos = Position(sn.entry)

    # --- moving ---

    def _base(self, target: Position) -> Snapshot:
        best = self.snapshots[0]
        for sn in self.snapshots:
            if sn.entry <= target.entry:
                best = sn
        return best

    def goto(self, target: Position) -> None:
        """Make the machine what it was at target (restore, then replay up to it)."""
        if target > self.end:
            target = self.end
        if target < self.pos:
            self.restore(self._base(target))
        elif self.pos.inside or self.pos.seq:
            # From the middle of a run call: replay it whole from its snapshot instead.
            # (Compiled blocks stamp events with the step their block started at, so a
            # call resumed mid-way would stamp some events differently.)
            self.restore(self._base(self.pos))
        self.forward(target, None)
        for v in self.vm.vcpus:
            v.cpu.withdraw_stop(CATCHPOINT)

    def replay_to(self, target: Position, stop=None) -> Position | None:
        """Replay the log from here to target. stop(v, position) -> bool is asked where a
        stop point may be (a breakpoint address reached, a catchpoint's event, after every
        instruction with watchpoints): True ends the replay there."""
        self.replaying = True
        try:
            while self.pos < target:
                p = self.pos
                e = self.log[p.entry]
                if p.entry < target.entry:
                    end = Position(p.entry + 1)
                    limit, seq = e.retired, e.catch
                else:
                    end = target
                    limit = target.inside
                    seq = (target.seq, e.catch[1] if e.catch else e.vcpu) if target.seq else None
                hit = self._replay_entry(e, p, limit, seq, end, stop)
                if hit is not None:
                    return hit
            return None
        finally:
            self.replaying = False
            self.stop_seq = None

    def _replay_entry(self, e: Entry, p: Position, limit: int, seq, end: Position, stop):
        vm = self.vm
        if e.vcpu < 0:
            vm._run_worker_item()
            self.pos = end
            return None
        v = vm.vcpus[e.vcpu]
        cpu = v.cpu
        full = end.entry > p.entry
        if seq is not None and seq[0] <= vm.bus.seq and p.inside == 0:
            vm.current = v                  # stopped at once: a catch asked for earlier
            if full or limit == 0:
                self.pos = end
                return None
        if full and p.inside == e.retired and not p.seq and e.reason in (BREAKPOINT, STEP_LIMIT):
            self.pos = end                  # stopped where the call ended: nothing follows
            return None
        start = cpu.steps - p.inside
        cpu.set_single_step(e.single or (stop is not None and stop.precise))
        bps = e.bps
        extra = stop.addresses if stop is not None else None
        if extra:
            bps = (bps or frozenset()) | extra
        self.stop_seq = seq
        # Step off a breakpoint only where one was just met (or as the call did at its start).
        skip = e.skip if p.inside == 0 and not p.seq else True
        while True:
            done = cpu.steps - start
            n = (e.n if full else limit) - done
            if stop is not None and stop.each:
                n = min(n, 1)
            if n <= 0 and not full:
                break
            caught = self.s.breakpoints.caught
            before = len(caught)
            reason = v._run(max(n, 0), bps, skip)
            skip = reason == BREAKPOINT
            done = cpu.steps - start
            here = Position(p.entry, done, vm.bus.seq if reason == CATCHPOINT else 0)
            if stop is not None and reason in (BREAKPOINT, CATCHPOINT, STEP_LIMIT):
                fresh = caught[before:] if reason == CATCHPOINT else ()
                if reason == CATCHPOINT and fresh:
                    here = Position(p.entry, done, fresh[0][1].seq)
                if here < end and stop(v, here, reason):
                    self.pos = here
                    return here
            if full:
                if done >= e.retired and self._ended(e, reason, seq):
                    break
                if done > e.retired:
                    raise RuntimeError("replay diverged from the recorded run")
            elif done >= limit and (seq is None or reason == CATCHPOINT):
                break
            if reason in (HALTED, SHUTDOWN) and not full:
                break
        self.stop_seq = None
        self.pos = end
        return None

    def _ended(self, e: Entry, reason: str, seq) -> bool:
        if e.reason == CATCHPOINT and seq is not None:
            return reason == CATCHPOINT
        if e.reason == BREAKPOINT:
            return reason == BREAKPOINT and (e.bps is not None and self.vm.vcpus[e.vcpu].cpu.rip in e.bps)
        return reason == e.reason or e.reason == STEP_LIMIT

    # --- positions of a vCPU's steps ---

    def position_of_step(self, vcpu: int, steps: int) -> Position | None:
        """The first moment vcpu had retired `steps` instructions (None: past the end)."""
        base = self.snapshots[0]
        have = self._steps_at_base(vcpu, base)
        if steps <= have:
            return Position(base.entry)
        for i in range(base.entry, len(self.log)):
            e = self.log[i]
            if e.vcpu != vcpu:
                continue
            if have + e.retired >= steps:
                return self._after(i, steps - have, e) if steps > have else Position(i)
            have += e.retired
        return None

    def _after(self, i: int, inside: int, e: Entry) -> Position:
        """Position(i, inside), or the next entry's start when that is the same count and
        a state change was made there (the debugger's write is part of that moment)."""
        if inside == e.retired and any(sn.barrier and sn.entry == i + 1 for sn in self.snapshots):
            return Position(i + 1)
        return Position(i, inside)

    def stop_at_step(self, vcpu: int, steps: int) -> Position | None:
        """The end of a logged call that stopped at a stop point with vcpu at `steps`
        (the stop a person saw there: a catchpoint stops in the middle of an exit)."""
        have = self._steps_at_base(vcpu, self.snapshots[0])
        found = None
        for i in range(self.snapshots[0].entry, len(self.log)):
            e = self.log[i]
            if e.vcpu == vcpu:
                have += e.retired
                if have == steps and e.reason in (BREAKPOINT, CATCHPOINT):
                    found = Position(i + 1)
            if have > steps:
                break
        return found

    def _steps_at_base(self, vcpu: int, base: Snapshot) -> int:
        """Steps vcpu had at the first snapshot: its steps now minus what the log ran."""
        cur = self.vm.vcpus[vcpu].cpu.steps
        done = sum(e.retired for e in self.log[base.entry:self.pos.entry] if e.vcpu == vcpu)
        return cur - done - self.pos.inside * (self.pos.entry < len(self.log) and
                                               self.log[self.pos.entry].vcpu == vcpu)

    def first_position(self) -> Position:
        return Position(self.snapshots[0].entry)

    def position_of_tick(self, ticks: int) -> Position | None:
        """The first moment the vCPUs had retired `ticks` instructions in all."""
        have = self.ticks() - self._ticks_since_base()
        base = self.snapshots[0]
        if ticks <= have:
            return Position(base.entry)
        for i in range(base.entry, len(self.log)):
            e = self.log[i]
            if have + e.retired >= ticks and e.retired:
                return self._after(i, ticks - have, e)
            have += e.retired
        return None

    def _ticks_since_base(self) -> int:
        base = self.snapshots[0]
        done = sum(e.retired for e in self.log[base.entry:self.pos.entry])
        return done + self.pos.inside

    def forward(self, target: Position, stop) -> Position | None:
        """Replay forward to target, through state changes, stopping where stop says."""
        for sn in self.snapshots:
            if sn.barrier and self.pos.entry < sn.entry <= target.entry:
                hit = self.replay_to(Position(sn.entry), stop)
                if hit is not None:
                    return hit
                self.restore(sn)
        return self.replay_to(target, stop)


class Detector:
    """Where the debugger's stop points would stop a replay (breakpoints, catchpoints,
    watchpoints, a nexti/finish target). collect: note every hit and go on (reverse
    scans); else the first hit ends the replay with its Outcome in self.outcome."""

    def __init__(self, s, target=None, collect: bool = False, skip: Position | None = None,
                 where=None):
        from kvmdbg.debug.engine.watch_reader import reader_for
        self.s = s
        self.where = where                  # fn(v) -> bool, asked after every instruction
        self.target = target
        self.collect = collect
        self.skip = skip                    # the position we start at: not a hit again
        self.found: list = []               # (position, hits, event)
        self.outcome = None
        t = s.breakpoints
        addrs = set(t.addresses())
        if target is not None:
            addrs.add(target.address)
        self.addresses = frozenset(addrs)
        self.wps = t.watchpoints()
        self.readers = {wp.number: reader_for(s, wp) for wp in self.wps}
        self.each = bool(self.wps) or where is not None
        self.precise = bool(t.catchpoints())     # as the live engine: stop right after the event

    def __call__(self, v, pos: Position, reason: str) -> bool:
        from kvmdbg.debug.engine import stops
        s = self.s
        if pos == self.skip:
            s.breakpoints.caught.clear()
            return False
        out = None
        if self.where is not None:
            if self.where(v):
                out = stops.Outcome(s._stop(STEP_LIMIT, v.index))
        elif reason == CATCHPOINT:
            out = stops._caught(s, v)
            if not out.hits:
                out = None
        elif reason == BREAKPOINT or v.cpu.rip in self.addresses:
            if v.cpu.rip in self.addresses:
                out = stops.at_breakpoint(s, v, self.target)
        if out is None and self.wps:
            hits = stops._check_watchpoints(s, v, self.wps, set(), self.readers)
            if hits:
                out = stops.Outcome(s._stop(stops.WATCHPOINT, v.index), hits)
        if out is None:
            return False
        if self.collect:
            key = (sum(x.cpu.steps for x in s.vm.vcpus), s.vm.bus.seq)
            if not self.found or self.found[-1][0] != pos:
                self.found.append((pos, out, key))
            return False
        self.outcome = out
        return True
