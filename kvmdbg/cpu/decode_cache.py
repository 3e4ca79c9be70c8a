"""Decoded instructions and compiled handlers, shared by every vCPU of a VM.

Everything is keyed by (guest-virtual address, host-physical address) of the
instruction: the gva because RIP-relative operands and branch targets depend on
it, the hpa because that is where the bytes live. Three tables: the generated
code of each instruction, single-instruction handlers (stepping, breakpoints)
and basic-block handlers (the fast loop). A write to a host page that holds
decoded code drops every entry made from it and tells each vCPU (cpu.smc), so a
block that has just modified its own code stops before running stale code.
"""

from __future__ import annotations


class DecodeCache:
    def __init__(self) -> None:
        self.codes: dict = {}        # key -> InsnCode
        self.singles: dict = {}      # key -> handler
        self.blocks: dict = {}       # key -> handler
        self.hot: set = set()        # keys of blocks that ran often: compiled running on
        self.code_pages: dict[int, list] = {}     # host page number -> keys of entries on it
        # (gva, hpa) of instructions that continue on the next page: their entries are keyed
        # (gva, hpa, hpa of the next page), since that page can be remapped on its own.
        self.crossing: set = set()
        self.cpus: list = []
        # Paging-structure pages the CPU walks: writes to them move pt_generation, which
        # invalidates every vCPU's walk memo (see Cpu.translate).
        self.pt_pages: set[int] = set()
        self.pt_generation = 0
        self.decoded = 0
        self.dropped = 0

    def decoded_codes(self) -> int:
        return len(self.codes)

    def attach(self, cpu) -> None:
        self.cpus.append(cpu)

    def track(self, key, hpns) -> None:
        """Remember that the entries under key were made from these host pages."""
        for hpn in hpns:
            keys = self.code_pages.get(hpn)
            if keys is None:
                self.code_pages[hpn] = [key]
                # This page may sit in a vCPU's write fast path, which skips this check.
                for cpu in self.cpus:
                    cpu.drop_fast_write()
            else:
                keys.append(key)

    def make_hot(self, key, rip: int) -> None:
        """A basic block ran often: drop its handler, so the next fetch compiles the block
        running on through its direct transfers (Cpu.fetch_block)."""
        self.hot.add(key)
        self.blocks.pop(key, None)
        for cpu in self.cpus:
            cpu.bcache.pop(rip, None)

    def track_pt(self, hpns) -> None:
        if self.pt_pages.issuperset(hpns):      # every walk calls this; nearly always known
            return
        new = [h for h in hpns if h not in self.pt_pages]
        if new:
            self.pt_pages.update(new)
            for cpu in self.cpus:
                cpu.drop_fast_write()

    def note_write(self, hpn: int) -> None:
        """Called for writes that may hit code or paging structures (the slow write path)."""
        if hpn in self.pt_pages:
            self.pt_generation += 1
        keys = self.code_pages.pop(hpn, None)
        if keys is None:
            return
        for k in keys:
            for table in (self.codes, self.singles, self.blocks):
                if table.pop(k, None) is not None:
                    self.dropped += 1
        for cpu in self.cpus:
            cpu.icache.clear()
            cpu.bcache.clear()
            cpu.smc = True
