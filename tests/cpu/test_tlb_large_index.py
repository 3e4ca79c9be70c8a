"""The TLB's index of large-page pieces against the rule it serves: flushing a page drops
every cached 4 KiB piece of the 2 MiB / 4 MiB / 1 GiB page containing it, in the contexts
the flush names (SDM Vol. 3A 4.10.2.3, 4.10.4.1), whatever was evicted or refilled since.

Oracle: a plain model of the same contexts (FIFO per context, bounded) that scans every
entry of a context on each page flush, as the SDM words the rule; random sequences of
fills (4 KiB pieces and pieces of large pages, global or not, several PCIDs), page
flushes, INVVPID of an address and whole-PCID flushes, with a small capacity so
evictions happen."""

from __future__ import annotations

from hypothesis import example, given, settings, strategies as st

from kvmdbg.cpu.tlb import GLOBAL, Tlb, TlbEntry

VPID, EP4TA = 1, 0x5000


class Model:
    def __init__(self, capacity):
        self.capacity = capacity
        self.ctx: dict = {}

    def fill(self, pcid, e):
        tag = (VPID, GLOBAL if e.glob else pcid, EP4TA)
        c = self.ctx.setdefault(tag, {})
        if len(c) >= self.capacity and e.vpn not in c:
            del c[next(iter(c))]
        if e.glob:
            self.ctx.get((VPID, pcid, EP4TA), {}).pop(e.vpn, None)
        c[e.vpn] = e

    def flush_vpn(self, vpn, match):
        n = 0
        for tag, c in self.ctx.items():
            if not match(tag):
                continue
            for v in [v for v, e in c.items()
                      if v == vpn or (e.size_shift > 12 and
                                      v >> (e.size_shift - 12) == vpn >> (e.size_shift - 12))]:
                del c[v]
                n += 1
        return n

    def entries(self):
        return sorted((tag, v, e.size_shift) for tag, c in self.ctx.items() for v, e in c.items())


def entry(vpn, shift, glob):
    return TlbEntry(vpn, None, vpn << 12, vpn << 12, True, True, False, True, glob, 0, shift)


# Pages near two 1 GiB / 2 MiB boundaries, so large pages overlap 4 KiB ones and each other.
VPNS = st.sampled_from([0x3FFFE, 0x3FFFF, 0x40000, 0x40001, 0x401FF, 0x40200, 0x40201, 0x7FFFF])
OPS = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from([0, 1]), VPNS, st.sampled_from([12, 21, 22, 30]),
              st.booleans()),
    st.tuples(st.just("page"), st.sampled_from([0, 1]), VPNS, st.booleans()),
    st.tuples(st.just("addr"), VPNS),
    st.tuples(st.just("pcid"), st.sampled_from([0, 1])))


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=60), st.sampled_from([2, 3, 8]))
# A piece of a 2 MiB page refilled as a 4 KiB page stays when another piece's page goes.
@example([("fill", 0, 0x40001, 21, False), ("fill", 0, 0x40001, 12, False),
          ("page", 0, 0x40000, False)], 8)
def test_page_flushes_drop_what_a_scan_would(ops, capacity):
    tlb, model = Tlb(capacity=capacity), Model(capacity)
    for op in ops:
        if op[0] == "fill":
            _, pcid, vpn, shift, glob = op
            tlb.fill(VPID, pcid, EP4TA, entry(vpn, shift, glob))
            model.fill(pcid, entry(vpn, shift, glob))
        elif op[0] == "page":
            _, pcid, vpn, glob = op
            got = tlb.flush_page(VPID, pcid, vpn, glob)
            assert got == model.flush_vpn(vpn, lambda t: t[1] == pcid or (glob and t[1] == GLOBAL))
        elif op[0] == "addr":
            assert tlb.flush_addr(VPID, op[1]) == model.flush_vpn(op[1], lambda t: True)
        else:
            tlb.flush_pcid(VPID, op[1])
            for tag in [t for t in model.ctx if t[1] == op[1]]:
                del model.ctx[tag]
        assert sorted((tag, v, e.size_shift) for tag, e_ in [(t, c) for t, c in tlb.contexts.items()]
                      for v, e in e_.items()) == model.entries()
