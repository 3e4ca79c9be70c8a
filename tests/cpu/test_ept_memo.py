"""EptHardware's walk memos (cpu/vmx.py: memo, prefixes) against walking every time.

Two EPT units over identical tables take the same random sequence of translations,
INVEPTs and table writes; one has the generation (and so its memos), the other none.
The writer keeps the contract of kvmdbg/generation.py: a change to an entry that was
present (SPTE_MMU_PRESENT) moves the generation, and nothing else does. Answers, exits
and every table byte must match.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmdbg.cpu import vmx as V
from kvmdbg.generation import Generation
from kvmdbg.mmu import spte as S

GPAS = [0x0, 0x1000, 0x2000, 0x200000, 0x201000, 0x40000000]
TABLES = {4: 1, 3: 2, 2: 3, 1: 4}     # level -> pfn of the table on every gpa's path


class _Pages(dict):
    def __missing__(self, pfn):
        page = self[pfn] = bytearray(4096)
        return page


def _entry(kind, level, arg):
    if kind == "zero":
        return 0
    if kind == "removed":
        return S.REMOVED_SPTE
    if kind == "mmio":
        return S.make_mmio_spte(arg, 1)
    if kind == "table" and level > 1:
        return S.make_nonleaf_spte(TABLES[level - 1]) & ~(S.EPT_ACCESSED if arg & 1 else 0)
    leaf_level = level if level < 4 else 1
    spte = S.make_spte(0x400 + (arg << (9 * (leaf_level - 1))), leaf_level, writable=bool(arg & 2))
    if arg & 4:
        spte &= ~(S.EPT_ACCESSED | S.EPT_DIRTY)
    if arg & 8:
        spte &= ~S.EPT_X
    if kind == "bad":
        # Misconfigured (SDM Vol. 3C 29.3.3.1): a reserved memory type, or W / X without R.
        spte = (spte & ~0x38) | ((2, 3, 7)[arg % 3] << 3) if arg & 1 else spte & ~1
    return spte


class World:
    def __init__(self, memo: bool):
        self.pages = _Pages()
        self.generation = Generation() if memo else None
        self.ept = V.EptHardware(self.pages, generation=self.generation)
        for level, pfn in TABLES.items():
            self.pages[pfn] = bytearray(4096)
        for gpa in GPAS:
            for level in (4, 3, 2, 1):
                kind = "table" if level > 1 else "leaf"
                self.put(level, gpa, _entry(kind, level, 0))
        self.ept.load_eptp(TABLES[4] << 12)

    def put(self, level, gpa, value):
        table = self.pages[TABLES[level]]
        off = ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
        old = int.from_bytes(table[off:off + 8], "little")
        table[off:off + 8] = value.to_bytes(8, "little")
        if old & S.SPTE_MMU_PRESENT and self.generation is not None:
            self.generation.value += 1

    def translate(self, gpa, kind, walk):
        try:
            _page, hpa, w, x = self.ept.translate(gpa, kind, walk)
            return ("ok", hpa, w, x)
        except V.VmExit as e:
            return ("exit", e.reason, e.qualification, e.gpa)


_op = st.one_of(
    st.tuples(st.just("translate"), st.sampled_from(GPAS),
              st.sampled_from([V.READ, V.WRITE, V.FETCH]), st.booleans()),
    st.tuples(st.just("put"), st.sampled_from(GPAS), st.integers(1, 4),
              st.tuples(st.sampled_from(["zero", "removed", "mmio", "table", "table", "leaf",
                                         "bad"]),
                        st.integers(0, 15))),
    st.tuples(st.just("invept"), st.just(0), st.just(0), st.booleans()),
)


def _apply(world, op):
    kind, a, b, c = op
    if kind == "translate":
        return world.translate(a, b, c)
    if kind == "put":
        world.put(b, a, _entry(c[0], b, c[1]))
    elif c:
        world.ept.invept_all()
    else:
        world.ept.invept_single(world.ept.ep4ta)
    return None


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(_op, min_size=1, max_size=50))
def test_memos_walk_as_walking(ops):
    memo, plain = World(True), World(False)
    for op in ops:
        assert _apply(memo, op) == _apply(plain, op), op
        assert dict(memo.pages) == dict(plain.pages)


def test_prefix_is_used():
    """After one walk, another gpa in the same 2 MiB starts at the last table (so the
    test above can fail)."""
    w = World(True)
    assert w.translate(0x1000, V.READ, True)[0] == "ok"
    assert list(w.ept.prefixes.values()) == [(w.pages[TABLES[1]], 7, 0x100)]
    # Break the upper levels behind the memo's back: the memo still answers.
    w.pages[TABLES[4]][0:8] = bytes(8)
    assert w.translate(0x2000, V.READ, True)[0] == "ok"
    w.generation.value += 1
    assert w.translate(0x0, V.READ, True)[0] == "exit"


def test_cached_ep4tas_are_bounded_like_the_tlbs_contexts():
    """v5.15 loads a new root, so a new EP4TA, on every CR4 write, and never uses the old
    one again: the processor keeps translations for a bounded number of EP4TAs (it may
    drop any at any time, SDM Vol. 3C 29.4.1), not one cache per flip forever (which
    grew a million-flip run by gigabytes). The oldest goes, and the current one stays."""
    from pathlib import Path

    from kvmdbg.kvm.boot import boot, load_program
    from kvmdbg.kvm.profiles import get_profile
    from kvmdbg.kvm.scheduler import run_vm
    from kvmdbg.kvm.vm import Vm
    program = Path(__file__).resolve().parent.parent.parent / "programs" / "smep_flip.bin"
    vm = Vm(16 << 20, 1, profile=get_profile("v5.15"))
    boot(vm, load_program(str(program)), 3 * V.EptHardware.MAX_EP4TAS)
    run_vm(vm, 10**7)
    assert vm.stats["kvmdbg_cr4_writes"] == 3 * V.EptHardware.MAX_EP4TAS
    ept = vm.vcpus[0].ept
    assert len(ept.caches) == V.EptHardware.MAX_EP4TAS
    assert ept.caches[ept.ep4ta] is ept.cache
    # The ones kept are the newest: each flip's root has a higher address than the last.
    assert sorted(ept.caches) == list(ept.caches) and max(ept.caches) == ept.ep4ta


def test_evicting_an_ep4ta_cache_empties_it_and_counts():
    ept = V.EptHardware({})
    for n in range(V.EptHardware.MAX_EP4TAS):
        ept.load_eptp((n + 1) << 12)
        ept.cache[n] = ("page", n << 12, True, True)
    first = ept.caches[1 << 12]
    before = ept.evictions
    ept.load_eptp(0x100 << 12)
    assert (1 << 12) not in ept.caches and first == {}
    assert ept.evictions == before + 1 and len(ept.caches) == V.EptHardware.MAX_EP4TAS
    ept.load_eptp(2 << 12)                     # still cached: nothing goes
    assert ept.cache == {1: ("page", 1 << 12, True, True)} and ept.evictions == before + 1


def test_a_misconfigured_leaf_behind_a_remembered_prefix_is_one():
    """An empty leaf made misconfigured moves no generation (it was not present), so the
    walk starts from the remembered prefix and must check the leaf as the full walk does
    (SDM Vol. 3C 29.3.3.1): W or X without R, or a reserved memory type."""
    for arg in (0, 1, 3, 5):        # R cleared; memory types 3, 2 and 7 (see _entry)
        memo, plain = World(True), World(False)
        for w in (memo, plain):
            w.put(1, 0x2000, 0)
            assert w.translate(0x1000, V.READ, True)[0] == "ok"        # the prefix
            w.ept.invept_all()
            before = w.generation.value if w.generation else None
            w.put(1, 0x2000, _entry("bad", 1, arg))
            assert (w.generation.value if w.generation else None) == before
        assert memo.ept.prefixes
        got = memo.translate(0x2000, V.READ, True)
        assert got == plain.translate(0x2000, V.READ, True) == ("exit", V.EPT_MISCONFIG, 0, 0x2000)
