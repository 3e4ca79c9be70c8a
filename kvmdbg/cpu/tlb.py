"""The hardware TLB of one logical processor, tagged as SDM Vol. 3C 28.3 says.

Entries are combined GVA->HPA translations tagged by (VPID, PCID or GLOBAL, EP4TA).
Every entry covers one 4 KiB page; an entry made from a 2 MiB, 4 MiB (32-bit paging) or
1 GiB guest page remembers that page's size so INVLPG drops all of its pieces (SDM 4.10.2.3 lets a
processor cache a large page as smaller entries). Paging-structure caches are
not modelled: a walk always reads memory, which is what a processor that just
flushed them would do. Capacity is bounded per context with FIFO eviction,
deterministic because dicts keep insertion order.
"""

from __future__ import annotations

GLOBAL = -1          # the PCID tag of global entries (usable with any PCID)


def _nothing(*_args) -> None:
    pass


class TlbEntry:
    __slots__ = ("vpn", "page", "hpa", "gpa", "user", "writable", "nx", "dirty", "glob",
                 "pkey", "size_shift", "ept_w", "ept_x")

    def __init__(self, vpn, page, hpa, gpa, user, writable, nx, dirty, glob, pkey, size_shift,
                 ept_w=True, ept_x=True):
        self.vpn = vpn              # guest-virtual page number (4 KiB)
        self.page = page            # the host page (bytearray) or None for MMIO
        self.hpa = hpa              # host-physical address of the 4 KiB page
        self.gpa = gpa              # guest-physical address of the 4 KiB page
        self.user = user            # U/S AND-ed over the walk
        self.writable = writable    # R/W AND-ed over the walk
        self.nx = nx                # XD OR-ed over the walk (only with EFER.NXE)
        self.dirty = dirty          # the leaf's D bit was set when the entry was made
        self.glob = glob            # G bit with CR4.PGE
        self.pkey = pkey            # protection key of the leaf
        self.size_shift = size_shift    # 12, 21, 22 or 30: the guest page this piece belongs to
        self.ept_w = ept_w          # EPT permissions granted at fill time
        self.ept_x = ept_x


class Tlb:
    def __init__(self, capacity: int = 1536, max_contexts: int = 16) -> None:
        self.capacity = capacity
        self.max_contexts = max_contexts
        # (vpid, pcid or GLOBAL, ep4ta) -> {vpn: TlbEntry}
        self.contexts: dict[tuple[int, int, int], dict[int, TlbEntry]] = {}
        # tag -> {(log2 of 4 KiB pieces, large-page number): vpns filled as its pieces}, for
        # the contexts that may hold pieces of large pages, so a page flush finds them
        # without scanning the context. Evictions leave it; a vpn replaced by another
        # entry since is checked when the page goes.
        self.large: dict = {}
        self.fills = 0
        self.flushes = 0
        # Called after every invalidation: the owner's copies of entries (the CPU's fast
        # paths) go with them; after one page's invalidation only that page's copies.
        self.on_invalidate = _nothing
        self.on_invalidate_page = _nothing

    def __len__(self) -> int:
        return sum(map(len, self.contexts.values()))

    def entries(self):
        """(tag, entry) pairs in a stable order, for `info tlb` and tests."""
        for tag in sorted(self.contexts):
            for vpn in sorted(self.contexts[tag]):
                yield tag, self.contexts[tag][vpn]

    def lookup(self, vpid: int, pcid: int, ep4ta: int, vpn: int, pge: bool) -> TlbEntry | None:
        ctx = self.contexts.get((vpid, pcid, ep4ta))
        if ctx is not None:
            e = ctx.get(vpn)
            if e is not None:
                return e
        if pge:
            ctx = self.contexts.get((vpid, GLOBAL, ep4ta))
            if ctx is not None:
                return ctx.get(vpn)
        return None

    def fill(self, vpid: int, pcid: int, ep4ta: int, entry: TlbEntry) -> None:
        tag = (vpid, GLOBAL if entry.glob else pcid, ep4ta)
        ctx = self.contexts.get(tag)
        if ctx is None:
            if len(self.contexts) >= self.max_contexts:
                oldest = next(iter(self.contexts))
                del self.contexts[oldest]
                self.large.pop(oldest, None)
            ctx = self.contexts[tag] = {}
        elif len(ctx) >= self.capacity and entry.vpn not in ctx:
            victim = next(iter(ctx))
            gone = ctx.pop(victim)
            if gone.size_shift > 12:           # keep the index to what is cached
                pieces = gone.size_shift - 12
                self.large.get(tag, {}).get((pieces, victim >> pieces), set()).discard(victim)
        # A page cached as global must not also answer from a stale non-global entry.
        if entry.glob:
            other = self.contexts.get((vpid, pcid, ep4ta))
            if other is not None:
                other.pop(entry.vpn, None)
        ctx[entry.vpn] = entry
        if entry.size_shift > 12:
            pieces = entry.size_shift - 12
            self.large.setdefault(tag, {}).setdefault((pieces, entry.vpn >> pieces), set()).add(entry.vpn)
        self.fills += 1

    # --- invalidation primitives; the SDM rules are composed from these by the CPU ---

    def _drop(self, pred) -> int:
        n = 0
        for tag in list(self.contexts):
            if pred(tag):
                n += len(self.contexts.pop(tag))
                self.large.pop(tag, None)
        self.flushes += 1
        self.on_invalidate()
        return n

    def flush_page(self, vpid: int, pcid: int, vpn: int, include_global: bool) -> int:
        """Entries for one page: the given PCID (and globals), all EP4TAs of the VPID.

        "The page" is the guest page that contains vpn: for a 2 MiB or 1 GiB page every
        cached 4 KiB piece of it goes, whether or not vpn's own piece was cached."""
        return self._flush_vpn(vpn, lambda t: t[0] == vpid and (
            t[1] == pcid or (include_global and t[1] == GLOBAL)))

    def flush_addr(self, vpid: int, vpn: int) -> int:
        """INVVPID individual-address: the page in every PCID (globals too) and EP4TA of a VPID."""
        return self._flush_vpn(vpn, lambda t: t[0] == vpid)

    def _flush_vpn(self, vpn: int, tag_matches) -> int:
        n = 0
        for tag, ctx in self.contexts.items():
            if not tag_matches(tag):
                continue
            if ctx.pop(vpn, None) is not None:
                n += 1
            index = self.large.get(tag)
            if index:
                n += self._drop_large(ctx, index, vpn)
        self.flushes += 1
        self.on_invalidate_page(vpn)
        return n

    @staticmethod
    def _drop_large(ctx: dict, index: dict, vpn: int) -> int:
        """Drop the cached pieces of any large page containing vpn (found through the
        index; a piece counts if it is still cached as a piece of that page)."""
        n = 0
        for pieces in (9, 10, 18):
            for v in index.pop((pieces, vpn >> pieces), ()):
                e = ctx.get(v)
                if e is not None and e.size_shift - 12 == pieces:
                    del ctx[v]
                    n += 1
        return n

    def flush_pcid(self, vpid: int, pcid: int, include_global: bool = False) -> int:
        """All non-global entries of one PCID of a VPID (optionally globals too)."""
        return self._drop(lambda t: t[0] == vpid and (t[1] == pcid or (include_global and t[1] == GLOBAL)))

    def flush_vpid(self, vpid: int, include_global: bool = True) -> int:
        """All entries of a VPID, all PCIDs and EP4TAs (INVVPID single-context)."""
        return self._drop(lambda t: t[0] == vpid and (include_global or t[1] != GLOBAL))

    def flush_ep4ta(self, ep4ta: int) -> int:
        """All combined entries made with one EPT root (INVEPT single-context).

        _drop's loop without the predicate call: this runs on every VM entry that loads a
        root (see Cpu.fetch_block for what going through _drop measured)."""
        n = 0
        contexts = self.contexts
        for tag in list(contexts):
            if tag[2] == ep4ta:
                n += len(contexts.pop(tag))
                self.large.pop(tag, None)
        self.flushes += 1
        self.on_invalidate()
        return n

    def flush_all(self) -> int:
        n = len(self)
        self.contexts.clear()
        self.large.clear()
        self.flushes += 1
        self.on_invalidate()
        return n
