"""KVM's instruction emulator, as used for MMIO (x86_emulate_instruction's path).

The instruction's semantics come from the interpreter's own handler (the same
code the CPU runs), but every memory access goes the way KVM's emulator goes:
guest-virtual addresses through KVM's software walker with cpu_role's permission
tables (an injected #PF if they say no), guest-physical addresses through the
memslots, and MMIO to userspace. Hence a stale cpu_role shows up here and only here.
"""

from __future__ import annotations

from kvmdbg.cpu.faults import GuestFault
from kvmdbg.cpu.regs import AC, CR4_PKE, MAXPHYADDR
from kvmdbg.cpu.translate import make_handler
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import paging_tmpl
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu_internal import RetPF
from kvmdbg.mmu.tdp_iter import for_each_tdp_pte


def handle_mmio_page_fault(vcpu, gpa: int) -> RetPF:
    """An EPT misconfiguration: emulate if the MMIO SPTE's generation is current."""
    kvm = vcpu.kvm
    root = vcpu.mmu.root.sp
    spte = _leaf_spte(kvm, root, gpa >> 12) if root is not None else 0
    if S.is_mmio_spte(spte):
        gen = S.get_mmio_spte_gen(spte)
        kvm.trace("check_mmio_spte", vcpu.index, kvm_gen=kvm.memslots.generation & S.MMIO_GEN_MASK,
                  spte_gen=gen, spte=spte)
        if gen == kvm.memslots.generation & S.MMIO_GEN_MASK:
            kvm.trace("handle_mmio_page_fault", vcpu.index, addr=gpa, gfn=gpa >> 12, access=7)
            return RetPF.EMULATE
    # Stale generation (a memslot changed): take the full fault path again.
    return M.kvm_mmu_page_fault(vcpu, gpa, M.PFERR_RSVD)


def _leaf_spte(kvm, root, gfn: int) -> int:
    """The last SPTE on gfn's path (get_mmio_spte's walk): a leaf, an MMIO SPTE or a hole."""
    spte = 0
    for it in for_each_tdp_pte(kvm.mmu_pages.pages, root, gfn, gfn + 1):
        spte = it.old_spte
    return spte


def emulate_instruction(vcpu) -> None:
    """Emulate the instruction at RIP; a #PF from KVM's walker is injected into the guest."""
    kvm = vcpu.kvm
    cpu = vcpu.cpu
    kvm.stats["insn_emulation"] += 1
    kvm.charge(vcpu, "mmio_emulate")
    em = _Emulator(vcpu)
    try:
        code = em.fetch(cpu.rip)
        handler = _handler(cpu, code)
        kvm.trace("kvm_emulate_insn", vcpu.index, rip=cpu.rip, insn=handler.insns[0].text)
        cpu.flush_fast()                         # force every access through the emulator
        cpu.rd = cpu.read_miss = em.read
        cpu.wr = cpu.write_miss = em.write
        try:
            handler(cpu, cpu.r)
        finally:
            del cpu.rd, cpu.wr, cpu.read_miss, cpu.write_miss
        cpu.steps += 1
    except paging_tmpl.WalkFault as f:
        vcpu.inject_page_fault(f.error_code, f.address)     # kvm_inject_emulated_page_fault


_HANDLERS_KEPT = 4096
# (rip, bytes, code size, translator) -> compiled handler: a pure function of its key (the
# handler's code depends on nothing else), so it is shared and never invalidated; bounded.
_handlers: dict = {}


def _handler(cpu, code: bytes):
    """The compiled handler for the instruction at RIP with these bytes, in this code size:
    a guest that writes its page tables under shadow paging has the same few instructions
    emulated over and over, and compiling each one again cost more than emulating it."""
    cache = _handlers
    key = (cpu.rip, code, cpu.code_bits, cpu.translator)
    handler = cache.get(key)
    if handler is None:
        d = cpu.decoder.decode(code, cpu.rip, cpu.code_bits)
        if d is None:
            raise GuestFault(6)
        if len(cache) >= _HANDLERS_KEPT:
            cache.clear()
        handler = cache[key] = make_handler([cpu.translator(d)])
    return handler


class _Emulator:
    """x86_emulate_ops for one emulated instruction."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.kvm = vcpu.kvm
        self.cpu = vcpu.cpu

    def _pfec(self, write: bool = False, fetch: bool = False) -> int:
        pfec = M.PFERR_USER if self.cpu.cs & 3 == 3 else 0
        if write:
            pfec |= M.PFERR_WRITE
        if fetch:
            pfec |= M.PFERR_FETCH
        return pfec

    def gva_to_gpa(self, gva: int, pfec: int) -> int:
        cpu = self.cpu
        kvm = self.kvm
        return paging_tmpl.gva_to_gpa(
            self.vcpu.mmu, kvm.read_gpa, kvm.write_gpa, cpu.cr3, gva, pfec,
            bool(cpu.get_rflags() & AC), cpu.pkru if cpu.cr4 & CR4_PKE else 0,
            refresh=M.refresh_passthrough_bits(self.vcpu),
            trace=(lambda name, **f: kvm.trace(name, self.vcpu.index, **f)) if kvm.bus.active else None,
            maxphyaddr=MAXPHYADDR, pdptrs=paging_tmpl.kvm_pdptr_read(self.vcpu))

    def fetch(self, rip: int) -> bytes:
        """Up to 15 bytes at RIP, translated once per page (__do_insn_fetch_bytes reads
        through kvm_fetch_guest_virt, one gva_to_gpa per page); a fault on the second page
        only shortens the fetch."""
        out = b""
        for va, n in _pieces(rip, 15):
            try:
                gpa = self.gva_to_gpa(va, self._pfec(fetch=True))
            except paging_tmpl.WalkFault:
                if out:
                    break
                raise
            out += self.kvm.read_gpa(gpa, n)
        return out

    def read(self, va: int, size: int) -> int:
        """A read translated once per page it touches (kvm_read_guest_virt_helper)."""
        data = b""
        for a, n in _pieces(va, size):
            gpa = self.gva_to_gpa(a, self._pfec())
            if self.kvm.memslots.lookup(gpa >> 12) is None:
                return self.kvm.vmm.mmio_read(self.vcpu, gpa, size)
            data += self.kvm.read_gpa(gpa, n)
        return int.from_bytes(data, "little")

    def write(self, va: int, size: int, value: int) -> None:
        gpa = self.gva_to_gpa(va, self._pfec(write=True))
        if self.kvm.memslots.lookup(gpa >> 12) is None:
            self.kvm.vmm.mmio_write(self.vcpu, gpa, size, value)
            return
        data = value.to_bytes(size, "little")
        if (va & 0xFFF) + size <= 4096:
            self._write_phys(gpa, data)
            return
        for a, n in _pieces(va, size):
            g = gpa if a == va else self.gva_to_gpa(a, self._pfec(write=True))
            self._write_phys(g, data[a - va:a - va + n])

    def _write_phys(self, gpa: int, data: bytes) -> None:
        """emulator_write_phys: the write, then the page-track notifier (kvm_mmu_track_write)."""
        self.kvm.write_gpa(gpa, data)
        if self.kvm.shadow is not None:
            self.kvm.shadow.track_write(self.vcpu, gpa, len(data))


def _pieces(va: int, size: int):
    """(address, length) of the parts of [va, va + size) in each 4 KiB page."""
    while size:
        n = min(size, 4096 - (va & 0xFFF))
        yield va, n
        va += n
        size -= n
