"""EptHardware's walk (cpu/vmx.py, written for speed) against the SDM's rules as a plain
walk: random 4-level EPT tables with every permission, memory type, large-page and
accessed/dirty combination; the answer or the exit, and every table byte after it, must
be the reference's. The reference is the walk as kvmdbg first wrote it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmdbg.cpu import vmx as V

_BAD_MEMTYPES = (2, 3, 7)


def reference_walk(pages, ep4ta, gpa, kind, walk, ad_enabled=True):
    pfn = ep4ta >> 12
    r = w = x = True
    used = []
    level = 4
    while True:
        table = pages[pfn]
        off = ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
        e = int.from_bytes(table[off:off + 8], "little")
        if e & 7 == 0:
            return ("violation", V._KIND_QUAL[kind] | V.EPT_QUAL_GLA_VALID
                    | (0 if walk else V.EPT_QUAL_GLA_FINAL))
        if (e & 2 and not e & 1) or (e & 4 and not e & 1):
            return ("misconfig",)
        leaf = level == 1 or (e & 0x80 and level in (2, 3))
        if leaf and ((e >> 3) & 7) in _BAD_MEMTYPES:
            return ("misconfig",)
        r, w, x = r and bool(e & 1), w and bool(e & 2), x and bool(e & 4)
        used.append((table, off, e))
        if leaf:
            break
        pfn = (e >> 12) & ((1 << 40) - 1)
        level -= 1
    if not (r, w, x)[kind]:
        rights = ((r and V.EPT_QUAL_READABLE) | (w and V.EPT_QUAL_WRITABLE)
                  | (x and V.EPT_QUAL_EXECUTABLE))
        return ("violation", V._KIND_QUAL[kind] | rights | V.EPT_QUAL_GLA_VALID
                | (0 if walk else V.EPT_QUAL_GLA_FINAL))
    if ad_enabled:
        for i, (table, off, e) in enumerate(used):
            new = e | 0x100 | (0x200 if i == len(used) - 1 and kind == V.WRITE else 0)
            table[off:off + 8] = new.to_bytes(8, "little")
    span = 9 * (level - 1)
    base_pfn = (e >> 12) & ((1 << 40) - 1) & ~((1 << span) - 1)
    leaf_pfn = base_pfn + ((gpa >> 12) & ((1 << span) - 1))
    return ("ok", leaf_pfn << 12, w, x)


# R W X, memory type, ignore-PAT, PS, A, D; often a readable, writable, executable,
# write-back entry with A set, so that walks get through and the D update is exercised.
_flags = st.integers(0, 0x3FF) | st.integers(0, 0x3FF).map(lambda f: (f & ~0x38) | 0x137)


@st.composite
def _world(draw):
    """Tables at pfns 1..4 (one a level) along the path of gpa, and data pages 0x100+."""
    gpa = draw(st.sampled_from([0x0, 0x1000, 0x5000, 0x200000, 0x40201000, 0x7FFFF000]))
    entries = [draw(_flags) for _ in range(4)]
    pages = {pfn: bytearray(4096) for pfn in (1, 2, 3, 4)}
    for level, flags in zip((4, 3, 2, 1), entries):
        table = pages[5 - level]
        off = ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
        child = 6 - level if level > 1 else 0x100
        if level in (2, 3) and flags & 0x80:
            child = 0x40000 << (9 * (level - 2))  # an aligned large page
        table[off:off + 8] = (child << 12 | flags).to_bytes(8, "little")
    return gpa, pages, draw(st.sampled_from([V.READ, V.WRITE, V.FETCH])), draw(st.booleans())


class _Pages(dict):
    def __missing__(self, pfn):
        page = self[pfn] = bytearray(4096)
        return page


@settings(max_examples=500, deadline=None, database=None)
@given(_world(), st.booleans())
def test_walk_as_the_reference(world, ad_enabled):
    gpa, pages, kind, walk = world
    ref_pages = _Pages({k: bytearray(v) for k, v in pages.items()})
    want = reference_walk(ref_pages, 1 << 12, gpa, kind, walk, ad_enabled)
    hw = V.EptHardware(_Pages(pages), ad_enabled=ad_enabled)
    hw.load_eptp(1 << 12)
    try:
        page, hpa, w, x = hw.translate(gpa, kind, walk)
        got = ("ok", hpa, w, x)
        assert page is hw.host_pages[hpa >> 12]
    except V.VmExit as e:
        got = (("violation", e.qualification & 0x1FF) if e.reason == V.EPT_VIOLATION
               else ("misconfig",))
        if e.reason == V.EPT_VIOLATION:
            want = (want[0], want[1] & 0x1FF)
    assert got == want
    assert {k: bytes(v) for k, v in hw.host_pages.items() if any(v) or k < 5} == \
        {k: bytes(v) for k, v in ref_pages.items() if any(v) or k < 5}
