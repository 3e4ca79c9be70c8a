"""The VM: memslots over host memory, the vCPUs, the event bus, the VMM's devices.

Mirrors struct kvm at the level issue #2 needs; the KVM MMU model plugs into
Vcpu.translate_gpa (today: memslot lookup, i.e. no second-level paging yet).
"""

from __future__ import annotations

from kvmdbg.bits import PAGE_SHIFT
from kvmdbg.cpu.decode_cache import DecodeCache
from kvmdbg.events import EventBus
from kvmdbg.mem import HostMemory, Memslot, Memslots

# Ports of the VMM's userspace interface (design section 3).
PORT_CONSOLE = 0xE9
PORT_OVERLAY, PORT_UNOVERLAY, PORT_MARKER, PORT_KICK = 0x510, 0x511, 0x512, 0x513
VMM_PORTS = {PORT_OVERLAY: "overlay", PORT_UNOVERLAY: "unoverlay", PORT_MARKER: "marker",
             PORT_KICK: "kick"}


class Vm:
    def __init__(self, mem_size: int, nr_vcpus: int = 1, bus: EventBus | None = None):
        from kvmdbg.kvm.vcpu import Vcpu
        self.mem_size = mem_size
        self.host = HostMemory()
        self.memslots = Memslots()
        self.bus = bus or EventBus()
        self.decode_cache = DecodeCache()
        self.ram_hva = self.host.mmap(mem_size)
        self.memslots.create(Memslot(0, 0, mem_size >> PAGE_SHIFT, self.ram_hva))
        self.console = bytearray()
        self.console_sink = None          # callable(str) for guest console output
        self.io_exits: list[tuple] = []   # (vcpu, port, size, value) of VMM-port writes
        self.mmio_writes: list[tuple] = []
        self.vcpus = [Vcpu(self, i) for i in range(nr_vcpus)]

    # --- guest-physical memory as the VMM sees it ---

    def gfn_to_page(self, gfn: int):
        """(host page, pfn) behind a gfn, faulting the host page in; None for MMIO."""
        slot = self.memslots.lookup(gfn)
        if slot is None:
            return None
        pfn = self.host.hva_to_pfn(slot.gfn_to_hva(gfn))
        return self.host.pages[pfn], pfn

    def read_gpa(self, gpa: int, n: int) -> bytes:
        out = bytearray()
        while n:
            chunk = min(n, 4096 - (gpa & 0xFFF))
            got = self.gfn_to_page(gpa >> PAGE_SHIFT)
            if got is None:
                out += b"\xff" * chunk
            else:
                off = gpa & 0xFFF
                out += got[0][off:off + chunk]
            gpa += chunk
            n -= chunk
        return bytes(out)

    def write_gpa(self, gpa: int, data: bytes) -> None:
        """A VMM/debugger write: goes around the CPU, so it must tell the decode cache."""
        data = bytes(data)
        while data:
            chunk = min(len(data), 4096 - (gpa & 0xFFF))
            got = self.gfn_to_page(gpa >> PAGE_SHIFT)
            if got is None:
                raise ValueError(f"no memory at guest-physical address {gpa:#x}")
            page, pfn = got
            off = gpa & 0xFFF
            page[off:off + chunk] = data[:chunk]
            self.decode_cache.note_write(pfn)
            gpa += chunk
            data = data[chunk:]

    # --- devices ---

    def console_write(self, byte: int) -> None:
        self.console.append(byte)
        if self.console_sink is not None:
            self.console_sink(chr(byte))
