"""Decoded instructions, shared by every vCPU of a VM.

A handler is compiled once per (guest-virtual address, host-physical address)
pair: the gva because RIP-relative operands and branch targets depend on it, the
hpa because that is where the bytes live. A write to a host page that holds
decoded code drops every handler made from it, and every vCPU's fast paths that
could skip that check (self-modifying code stays exact).
"""

from __future__ import annotations


class DecodeCache:
    def __init__(self) -> None:
        self.handlers: dict[tuple[int, int], object] = {}     # (rip, hpa of rip) -> handler
        self.code_pages: dict[int, list] = {}                 # host page number -> keys
        self.cpus: list = []
        self.decoded = 0
        self.dropped = 0

    def attach(self, cpu) -> None:
        self.cpus.append(cpu)

    def add(self, key, handler, hpa_pages) -> None:
        self.handlers[key] = handler
        self.decoded += 1
        for hpn in hpa_pages:
            keys = self.code_pages.get(hpn)
            if keys is None:
                self.code_pages[hpn] = [key]
                # This page may be in some vCPU's write fast path, which skips this check.
                for cpu in self.cpus:
                    cpu.drop_fast_write()
            else:
                keys.append(key)

    def note_write(self, hpn: int) -> None:
        """Called for every write to a page that might hold code (the slow write path)."""
        keys = self.code_pages.pop(hpn, None)
        if keys is None:
            return
        for k in keys:
            if self.handlers.pop(k, None) is not None:
                self.dropped += 1
        for cpu in self.cpus:
            cpu.icache.clear()
