"""Host memory: the VMM's anonymous mappings (hva) backed on first touch by host pages (pfn).

Pages exist only once touched, so a 1 GiB guest costs memory only for the pages
it uses. A host page is a bytearray of 4096 bytes; its pfn is handed out in
allocation order, so host-physical addresses are deterministic run to run.
"""

from __future__ import annotations

from kvmdbg.bits import PAGE_SHIFT, PAGE_SIZE

# First pfn handed out; host-physical addresses are then visibly different from
# guest-physical ones (0x100000 + ...), which helps teaching two-dimensional paging.
FIRST_PFN = 0x10000


class _Pages(dict):
    """pfn -> page; pages of a reserved huge chunk come into being when first touched."""

    def __init__(self, owner: "HostMemory"):
        super().__init__()
        self._owner = owner

    def __missing__(self, pfn: int) -> bytearray:
        if self._owner.reserved(pfn):
            page = self[pfn] = bytearray(PAGE_SIZE)
            return page
        raise KeyError(pfn)


class HostMemory:
    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = _Pages(self)    # pfn -> page
        self._hva_to_pfn: dict[int, int] = {}      # hva page number -> pfn
        self._next_pfn = FIRST_PFN
        self._next_hva = 0x7F00_0000_0000           # where mmap() hands out guest RAM
        self._regions: list[tuple[int, int, int]] = []    # (start, end, huge page shift or 0)
        self._chunks: dict[int, int] = {}          # huge chunk hva >> shift -> first pfn
        self._reserved: list[tuple[int, int]] = []  # (first pfn, end pfn) of huge chunks

    def mmap(self, size: int, huge_shift: int = 0) -> int:
        """Reserve an anonymous hva range (nothing is allocated until touched).

        huge_shift 21 backs it with transparent huge pages, 30 with 1 GiB hugetlbfs pages:
        the host then hands out physically contiguous, aligned chunks, which is what
        lets KVM map the range with large SPTEs (the host mapping level)."""
        align = 1 << max(huge_shift, 30)
        hva = (self._next_hva + align - 1) & ~(align - 1)
        end = hva + ((size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        self._next_hva = end + (1 << 30)             # a guard gap between mappings
        self._regions.append((hva, end, huge_shift))
        return hva

    def _region(self, hva: int):
        for start, end, shift in self._regions:
            if start <= hva < end:
                return start, end, shift
        return None

    def host_mapping_level(self, hva: int) -> int:
        """1, 2 or 3: the size of the host page behind hva (4 KiB, 2 MiB, 1 GiB)."""
        r = self._region(hva)
        if r is None or not r[2]:
            return 1
        start, end, shift = r
        base = hva & ~((1 << shift) - 1)
        if base < start or base + (1 << shift) > end:
            return 1
        return 2 if shift == 21 else 3

    def reserved(self, pfn: int) -> bool:
        return any(a <= pfn < b for a, b in self._reserved)

    def alloc_page(self) -> int:
        """A fresh zeroed host page not mapped at any hva (page-table pages, roots)."""
        pfn = self._next_pfn
        self._next_pfn += 1
        self.pages[pfn] = bytearray(PAGE_SIZE)
        return pfn

    def free_page(self, pfn: int) -> None:
        self.pages.pop(pfn, None)

    def hva_to_pfn(self, hva: int) -> int:
        """Fault in the host page behind hva (hva_to_pfn / get_user_pages)."""
        hpn = hva >> PAGE_SHIFT
        pfn = self._hva_to_pfn.get(hpn)
        if pfn is None:
            level = self.host_mapping_level(hva)
            if level > 1:
                shift = 21 if level == 2 else 30
                first = self._chunks.get(hva >> shift)
                if first is None:
                    count = 1 << (shift - PAGE_SHIFT)
                    first = (self._next_pfn + count - 1) & ~(count - 1)    # aligned, contiguous
                    self._next_pfn = first + count
                    self._chunks[hva >> shift] = first
                    self._reserved.append((first, first + count))
                pfn = first + ((hva & ((1 << shift) - 1)) >> PAGE_SHIFT)
            else:
                pfn = self.alloc_page()
            self._hva_to_pfn[hpn] = pfn
        return pfn

    def lookup_pfn(self, hva: int):
        """The pfn behind hva if the host page exists, without faulting it in."""
        return self._hva_to_pfn.get(hva >> PAGE_SHIFT)

    def page(self, pfn: int) -> bytearray:
        return self.pages[pfn]

    def touched_pages(self) -> int:
        return len(self.pages)
