"""Guest memory as KVM sees it: memslots (gfn -> hva) over sparse host memory (hva -> pfn)."""

from kvmdbg.mem.host_memory import HostMemory
from kvmdbg.mem.memslot import Memslot, Memslots

__all__ = ["HostMemory", "Memslot", "Memslots"]
