"""Host-physical memory as the debugger sees it (`x hpa:ADDR`, `*(u64*)hpa:ADDR`).

An hpa is a frame of the simulator's host memory (HostMemory.pages, pfn << 12):
guest RAM pages once touched, and the pages KVM allocates for SPTE tables and
roots. Frames that do not exist are an error, never allocated by looking.
Guest-virtual and guest-physical access is Session.read_memory's (guest_walk.py).
"""

from __future__ import annotations

from kvmdbg.bits import PAGE_SHIFT, PAGE_SIZE
from kvmdbg.errors import CommandError


def pieces(addr: int, n: int):
    """(address, length) of each page's part of n bytes at addr."""
    while n > 0:
        chunk = min(n, PAGE_SIZE - (addr & 0xFFF))
        yield addr, chunk
        addr += chunk
        n -= chunk


def _page(vm, hpa: int):
    page = vm.host.pages.get(hpa >> PAGE_SHIFT)
    if page is None:
        raise CommandError(f"Cannot access memory at address hpa:{hpa:#x} (no host page at pfn "
                           f"{hpa >> PAGE_SHIFT:#x})")
    return page


def read_hpa(vm, hpa: int, n: int) -> bytes:
    out = bytearray()
    for a, chunk in pieces(hpa, n):
        off = a & 0xFFF
        out += _page(vm, a)[off:off + chunk]
    return bytes(out)


def write_hpa(vm, hpa: int, data: bytes) -> None:
    """A write behind everybody's back (host memory): the decode cache and the MMU pages'
    bookkeeping of which entries are in use are told, nothing else."""
    pos = 0
    for a, chunk in pieces(hpa, len(data)):
        off = a & 0xFFF
        _page(vm, a)[off:off + chunk] = data[pos:pos + chunk]
        vm.decode_cache.note_write(a >> PAGE_SHIFT)
        vm.mmu_pages.note_write(a >> PAGE_SHIFT)
        pos += chunk
