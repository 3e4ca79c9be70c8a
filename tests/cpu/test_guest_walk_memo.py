"""GuestWalkMemo (cpu/walker.py) against the walk it replays.

Two identical worlds run the same random sequence of walks, guest page-table writes,
gpa -> host page remaps, unmapped tables and mode changes: one walks with the memo, the
other with walker.walk. Every outcome must match: the TLB entry or the fault, the
second level's translation misses (in order; a hit has no effect, as in EptHardware),
the pages the walk reports, and memory (accessed/dirty flags). The worlds follow the
decode cache's contract as the CPU does: pt_generation moves on a write to a host page a
successful walk read.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvmdbg.cpu import walker
from kvmdbg.cpu.faults import GuestFault, PFERR_FETCH, PFERR_USER, PFERR_WRITE

CR0 = 1 | (1 << 16) | (1 << 31)                     # PE, WP, PG
CR4_PAE, CR4_PGE, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 5, 1 << 7, 1 << 20, 1 << 21, 1 << 22
CR0_WP, RFLAGS_AC = 1 << 16, 1 << 18
EFER_LME, EFER_LMA, EFER_NXE = 1 << 8, 1 << 10, 1 << 11
P, RW, US, A, D, PS, G, XD = 1, 2, 4, 0x20, 0x40, 0x80, 0x100, 1 << 63

TABLE_GFNS = (1, 2, 3, 4, 5)          # PML4, PDPT, PD, two PTs
VAS = [0x0, 0x1000, 0x200000, 0x40000000, 0x7000]     # PT0[0], PT0[1], PT1[0], PDPT[1], PT0[7]


class Unmapped(Exception):
    """The second level refuses a gpa (stands for an EPT violation)."""


class Decode:
    def __init__(self):
        self.pt_generation = 0
        self.pt_pages = set()


class Ops:
    """The second level as EptHardware behaves: a translation once made is cached until
    the mapping changes (KVM flushes then), and only a miss has effects (it is logged)."""

    def __init__(self):
        self.host = {}                # hpn -> page
        self.gfn_to_hpn = {}
        self.cache = {}
        self.evictions = 0            # EptHardware's: bumped whenever the cache loses entries
        self.log = []

    def flush(self):
        self.cache.clear()
        self.evictions += 1

    def translate_gpa(self, gpa, kind, walk):
        got = self.cache.get(gpa >> 12)
        if got is not None:
            return got
        self.log.append((gpa, kind, walk))
        hpn = self.gfn_to_hpn.get(gpa >> 12)
        if hpn is None:
            raise Unmapped(gpa)
        got = self.cache[gpa >> 12] = (self.host[hpn], hpn << 12, True, True)
        return got

    def mmio_read(self, gpa, size):
        raise AssertionError("no MMIO here")


class World:
    def __init__(self):
        self.ops = Ops()
        self.decode_cache = Decode()
        self.cr0, self.cr4, self.efer, self.cr3 = CR0, CR4_PAE, EFER_LME | EFER_LMA, 1 << 12
        self.hw_cr0_on = 0
        self.pkru = 0
        self.rflags = 2
        self.features = frozenset()
        self.walk_pt_pages = []
        for gfn in range(0x10):
            self.ops.host[0x100 + gfn] = bytearray(4096)
            self.ops.gfn_to_hpn[gfn] = 0x100 + gfn
        pml4, pdpt, pd, pt0, pt1 = TABLE_GFNS
        self.put(pml4, 0, pdpt << 12 | P | RW | US | A)
        self.put(pdpt, 0, pd << 12 | P | RW | US | A)
        self.put(pdpt, 1, pd << 12 | P | RW | US)          # no A yet
        self.put(pd, 0, pt0 << 12 | P | RW | US | A)
        self.put(pd, 1, pt1 << 12 | P | RW | A)
        for i in range(8):
            self.put(pt0, i, (8 + i) << 12 | P | RW | US | A | (D if i & 1 else 0))
            self.put(pt1, i,
                     (8 + i) << 12 | P | (RW if i & 2 else 0) | A | D | (XD if i & 4 else 0))

    def get_rflags(self):
        return self.rflags

    def page(self, gfn):
        return self.ops.host[self.ops.gfn_to_hpn[gfn]]

    def put(self, gfn, index, value):
        self.page(gfn)[index * 8:index * 8 + 8] = value.to_bytes(8, "little")

    def write(self, gfn, index, value):
        """A guest write: DecodeCache.note_write's rule for paging structures."""
        hpn = self.ops.gfn_to_hpn.get(gfn)
        if hpn is None:
            return
        self.ops.host[hpn][index * 8:index * 8 + 8] = value.to_bytes(8, "little")
        if hpn in self.decode_cache.pt_pages:
            self.decode_cache.pt_generation += 1

    def translate(self, walk_fn, va, acc):
        """Cpu.translate's part: walk, then track the tables read."""
        self.ops.log.clear()
        try:
            e = walk_fn(self, va, acc)
        except GuestFault as f:
            return ("fault", f.vector, f.error_code, tuple(self.ops.log))
        except Unmapped as u:
            return ("unmapped", u.args, tuple(self.ops.log))
        self.decode_cache.pt_pages.update(self.walk_pt_pages)
        fields = tuple(getattr(e, n) for n in e.__slots__ if n != "page")
        return ("ok", fields, tuple(self.walk_pt_pages), tuple(self.ops.log))

    def snapshot(self):
        return {hpn: bytes(p) for hpn, p in self.ops.host.items()}


_entry = st.builds(lambda gfn, flags, extra: gfn << 12 | flags | extra,
                   st.integers(1, 15),
                   st.integers(0, 0x7F) | st.just(P | RW | US | A),
                   st.sampled_from([0, XD, 1 << 52, G]))

_op = st.one_of(
    st.tuples(st.just("walk"), st.sampled_from(VAS),
              st.sampled_from([0, PFERR_WRITE, PFERR_FETCH, PFERR_USER, PFERR_USER | PFERR_WRITE,
                               PFERR_USER | PFERR_FETCH])),
    st.tuples(st.just("write"), st.sampled_from(TABLE_GFNS), st.sampled_from([0, 1, 7]), _entry),
    st.tuples(st.just("remap"), st.sampled_from(TABLE_GFNS), st.integers(0, 0x1F)),
    st.tuples(st.just("unmap"), st.sampled_from(TABLE_GFNS), st.just(0)),
    st.tuples(st.just("mode"), st.sampled_from(["nxe", "smep", "pge", "cr3", "wp", "smap", "ac",
                                                "pke"]), st.just(0)),
)


def _apply(world, op, walk_fn):
    kind, a, b, *rest = op + (None,)
    if kind == "walk":
        return world.translate(walk_fn, a, b)
    if kind == "write":
        world.write(a, b, rest[0])
    elif kind == "remap":
        hpn = 0x200 + b               # another host page, with its own (copied) contents
        if hpn not in world.ops.host:
            world.ops.host[hpn] = bytearray(world.ops.host[0x100 + TABLE_GFNS[b % 5]])
        world.ops.gfn_to_hpn[a] = hpn
        world.ops.flush()
    elif kind == "unmap":
        world.ops.gfn_to_hpn.pop(a, None)
        world.ops.flush()
    else:
        for register, bits in MODE_FLIPS[a]:
            setattr(world, register, getattr(world, register) ^ bits)
    return None


# What each "mode" op flips: (the World's register, its bits).
MODE_FLIPS = {"nxe": [("efer", EFER_NXE)], "smep": [("cr4", CR4_SMEP)], "pge": [("cr4", CR4_PGE)],
              "wp": [("cr0", CR0_WP)], "smap": [("cr4", CR4_SMAP)], "ac": [("rflags", RFLAGS_AC)],
              # key 0 (every page here): access- and write-disable
              "pke": [("cr4", CR4_PKE), ("pkru", 0x3)],
              "cr3": [("cr3", 3 << 12)]}          # between gfn 1 and gfn 2 as the PML4


# A replay that checked its tables, then a table remapped (its cache entry goes): the next
# replay must look the tables up again, not trust what it found before.
REPLAY_AFTER_REMAP = [("walk", 0x1000, 0), ("walk", 0x1000, 0), ("remap", 3, 1), ("walk", 0x1000, 0)]


# A walk remembered in a mode that allowed it, replayed in one that does not: SMAP and a
# supervisor read of a user page, SMEP and a supervisor fetch from one, WP and a
# supervisor write to a read-only page (PT1[0]), and the same with AC set (SMAP allows).
SMAP_AFTER = [("walk", 0x0, 0), ("mode", "smap", 0), ("walk", 0x0, 0), ("mode", "ac", 0),
              ("walk", 0x0, 0)]
SMEP_AFTER = [("walk", 0x0, PFERR_FETCH), ("mode", "smep", 0), ("walk", 0x0, PFERR_FETCH)]
WP_AFTER = [("mode", "wp", 0), ("walk", 0x200000, PFERR_WRITE), ("mode", "wp", 0),
            ("walk", 0x200000, PFERR_WRITE), ("walk", 0x200000, 0)]


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(_op, min_size=1, max_size=60), st.booleans())
@example(REPLAY_AFTER_REMAP, True)
@example(SMAP_AFTER, True)
@example(SMEP_AFTER, False)
@example(WP_AFTER, True)
def test_memo_walks_as_the_walker(ops, probe_cache):
    """probe_cache: the memo is given the second level's cache and evictions count, as
    the vCPU gives it its EptHardware, so it also skips the tables' lookups while that
    cache has lost nothing (TablePath)."""
    plain, memoised = World(), World()
    memo = walker.GuestWalkMemo(memoised.ops if probe_cache else None)
    for op in ops:
        assert _apply(memoised, op, memo.walk) == _apply(plain, op, walker.walk), op
        assert memoised.snapshot() == plain.snapshot()


def test_replay_is_taken():
    """The memo is used (so the test above can fail): a second walk is a replay, and a
    remapped table makes it walk again."""
    w = World()
    memo = walker.GuestWalkMemo()
    first = w.translate(memo.walk, 0x1000, 0)
    assert first[0] == "ok" and len(memo.entries) == 1
    calls = []
    real = walker.walk
    try:
        walker.walk = lambda *a: calls.append(a) or real(*a)
        w.ops.cache.clear()
        assert w.translate(memo.walk, 0x1000, 0) == first
        assert calls == []                            # replayed, translations and all
        w.ops.gfn_to_hpn[3] = 0x300
        w.ops.cache.clear()
        w.ops.host[0x300] = bytearray(w.ops.host[0x103])
        again = w.translate(memo.walk, 0x1000, 0)
        assert len(calls) == 1 and again[0] == "ok"   # walked again on the other page
    finally:
        walker.walk = real


def test_memo_pickles_empty():
    import pickle
    w = World()
    memo = walker.GuestWalkMemo()
    w.translate(memo.walk, 0x1000, 0)
    assert memo.entries
    assert pickle.loads(pickle.dumps(memo)).entries == {}


def _run(program, profile, memo: bool):
    from pathlib import Path

    from kvmdbg.kvm.boot import boot, load_program
    from kvmdbg.kvm.profiles import get_profile
    from kvmdbg.kvm.scheduler import run_vm
    from kvmdbg.kvm.vm import Vm
    root = Path(__file__).resolve().parent.parent.parent
    vm = Vm(16 << 20, 1, profile=get_profile(profile))
    boot(vm, load_program(str(root / "programs" / f"{program}.bin")), 6)
    if not memo:
        for v in vm.vcpus:
            v.cpu.walk_fn = walker.walk
    vm.bus.set_keep(10**6)
    run_vm(vm, 100_000)
    cpu = vm.vcpus[0].cpu
    return (list(vm.stats.items()), cpu.steps, cpu.cycles, cpu.walks, list(cpu.r),
            [(e.name, e.vcpu, e.step, e.cycles, sorted(e.fields.items())) for e in vm.bus.log],
            {pfn: bytes(p) for pfn, p in vm.host.pages.items()})


def test_vm_runs_as_without_the_memo():
    """Whole runs (events, stats, simulated cycles, every host page) with and without it."""
    for program in ("smep_flip", "pt_edit", "cr0_wp_flip", "memslot_overlay"):
        for profile in ("v5.15", "v6.12"):
            assert _run(program, profile, True) == _run(program, profile, False), (program, profile)
