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
        d = cpu.decoder.decode(code, cpu.rip, cpu.code_bits)
        if d is None:
            raise GuestFault(6)
        handler = make_handler([cpu.translator(d)])
        kvm.trace("kvm_emulate_insn", vcpu.index, rip=cpu.rip, insn=d.text)
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
        out = b""
        for i in range(15):
            try:
                gpa = self.gva_to_gpa(rip + i, self._pfec(fetch=True))
            except paging_tmpl.WalkFault:
                if out:
                    break
                raise
            out += self.kvm.read_gpa(gpa, 1)
        return out

    def read(self, va: int, size: int) -> int:
        data = b""
        for i in range(size):
            gpa = self.gva_to_gpa(va + i, self._pfec())
            if self.kvm.memslots.lookup(gpa >> 12) is None:
                return self.kvm.vmm.mmio_read(self.vcpu, gpa, size)
            data += self.kvm.read_gpa(gpa, 1)
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
        for i in range(size):
            g = self.gva_to_gpa(va + i, self._pfec(write=True))
            self._write_phys(g, data[i:i + 1])

    def _write_phys(self, gpa: int, data: bytes) -> None:
        """emulator_write_phys: the write, then the page-track notifier (kvm_mmu_track_write)."""
        self.kvm.write_gpa(gpa, data)
        if self.kvm.shadow is not None:
            self.kvm.shadow.track_write(self.vcpu, gpa, len(data))
