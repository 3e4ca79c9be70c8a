"""A vCPU: owns a Cpu and answers its CpuOps calls as KVM and the VMM would."""

from __future__ import annotations

from kvmdbg.bits import M64, PAGE_SHIFT
from kvmdbg.cpu import system
from kvmdbg.cpu.cpu import Cpu
from kvmdbg.cpu.translate import generate
from kvmdbg.kvm.cpuid import guest_cpuid
from kvmdbg.kvm.vm import PORT_CONSOLE, VMM_PORTS

KVM_ENOSYS = 1000
MMIO_TAG = 1 << 62       # hpa tag for MMIO pages (no host page behind them)


class Vcpu:
    def __init__(self, vm, index: int):
        self.vm = vm
        self.index = index
        self.ep4ta = 0
        self._gfn_cache: dict[int, tuple] = {}     # gfn -> translate_gpa answer
        self._gfn_cache_gen = -1                   # memslot generation it belongs to
        self.cpu = Cpu(self, vm.decode_cache, index=index, vpid=index + 1, translator=generate)

    # --- CpuOps ---

    def translate_gpa(self, gpa: int, kind: int, walk: bool):
        gfn = gpa >> PAGE_SHIFT
        hit = self._gfn_cache.get(gfn)
        if hit is not None and self._gfn_cache_gen == self.vm.memslots.generation:
            return hit
        if self._gfn_cache_gen != self.vm.memslots.generation:
            self._gfn_cache.clear()
            self._gfn_cache_gen = self.vm.memslots.generation
        got = self.vm.gfn_to_page(gfn)
        if got is None:
            return None, MMIO_TAG | (gpa & ~0xFFF), True, True
        page, pfn = got
        hit = self._gfn_cache[gfn] = (page, pfn << PAGE_SHIFT, True, True)
        return hit

    def mmio_read(self, gpa: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        self.vm.mmio_writes.append((self.index, gpa, size, value))

    def set_cr(self, cpu, n: int, value: int) -> None:
        system.arch_set_cr(cpu, n, value)

    def set_efer(self, cpu, value: int) -> None:
        system.arch_set_efer(cpu, value)

    def pio_in(self, cpu, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def pio_out(self, cpu, port: int, size: int, value: int) -> None:
        vm = self.vm
        if port == PORT_CONSOLE:
            vm.console_write(value & 0xFF)
            return
        if port in VMM_PORTS:
            # A KVM_EXIT_IO to userspace; the VMM side of these ports comes with the KVM model.
            vm.io_exits.append((self.index, port, size, value))
            bus = vm.bus
            if bus.active:
                bus.emit("kvm_pio", self.index, cpu.steps, rw=1, port=port, size=size, count=1,
                         val=value)

    def cpuid(self, cpu, leaf: int, subleaf: int):
        return guest_cpuid(leaf, subleaf, cpu)

    def hlt(self, cpu) -> None:
        cpu.halted = True
        cpu.pending = True
        cpu.stop_reason = "halted"

    def vmcall(self, cpu) -> None:
        cpu.r[0] = -KVM_ENOSYS & M64
