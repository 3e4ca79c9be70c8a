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


class HostMemory:
    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}      # pfn -> page
        self._hva_to_pfn: dict[int, int] = {}      # hva page number -> pfn
        self._next_pfn = FIRST_PFN
        self._next_hva = 0x7F00_0000_0000           # where mmap() hands out guest RAM

    def mmap(self, size: int) -> int:
        """Reserve an anonymous hva range (nothing is allocated until touched)."""
        hva = self._next_hva
        self._next_hva += (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        self._next_hva += 1 << 30                    # a guard gap between mappings
        return hva

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
            pfn = self.alloc_page()
            self._hva_to_pfn[hpn] = pfn
        return pfn

    def page(self, pfn: int) -> bytearray:
        return self.pages[pfn]

    def touched_pages(self) -> int:
        return len(self.pages)
