"""A vCPU with no hypervisor behind it: the CPU as bare hardware.

Used to test the interpreter against the architecture alone (CR writes take the
SDM path, no EPT, no exits). The VMM's devices still answer port I/O.
"""

from __future__ import annotations

from kvmdbg.bits import M64
from kvmdbg.cpu import executor, system
from kvmdbg.cpu.cpu import Cpu
from kvmdbg.cpu.translate import generate
from kvmdbg.kvm import x86
from kvmdbg.kvm.cpuid import cpuid_features, guest_cpuid
from kvmdbg.stop_reason import HALTED

KVM_ENOSYS = 1000


class BareVcpu:
    in_kvm = False
    ep4ta = 0

    def __init__(self, vm, index: int):
        self.vm = self.kvm = vm
        self.index = index
        self.gpa_generation = vm.gpa_generation    # CpuOps: moves when memslots change
        self.cpu = Cpu(self, vm.decode_cache, index=index, vpid=index + 1, translator=generate)
        x86.kvm_vcpu_reset_msrs(self)
        self.set_cpuid(vm.cpu_features)

    def set_cpuid(self, features) -> None:
        """The processor's CPUID: the --cpu features (None: the boot contract's), obeyed
        as the SDM says (CR4/EFER reserved bits, #UD for absent instructions)."""
        cpu = self.cpu
        system.set_features(cpu, cpuid_features(
            lambda leaf, sub: guest_cpuid(leaf, sub, cpu, features=features)))

    def after_set_sregs(self) -> None:
        pass

    def make_request(self, req: str) -> None:
        pass

    def kick(self) -> bool:
        return False

    def run(self, max_steps: int, breakpoints=None, skip_first: bool = True) -> str:
        self.vm.current = self
        return executor.run(self.cpu, max_steps, breakpoints, skip_first)

    # --- CpuOps ---

    def translate_gpa(self, gpa: int, kind: int, walk: bool):
        return self.vm.host_page_of(gpa)

    def mmio_read(self, gpa: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        self.vm.mmio_writes.append((self.index, gpa, size, value))

    def handle_exit(self, cpu, exit_) -> None:
        raise AssertionError(f"bare hardware has no VM exits: {exit_}")

    def set_cr(self, cpu, n: int, value: int) -> None:
        system.arch_set_cr(cpu, n, value)

    def set_efer(self, cpu, value: int) -> None:
        system.arch_set_efer(cpu, value)

    def pio_in(self, cpu, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def pio_out(self, cpu, port: int, size: int, value: int) -> None:
        self.vm.vmm.handle_io(self, port, size, value)

    def cpuid(self, cpu, leaf: int, subleaf: int):
        return guest_cpuid(leaf, subleaf, cpu, features=self.vm.cpu_features)

    def rdmsr(self, cpu, index: int):
        """The IA32_APICBASE and MISC_ENABLE of the hardware: the SDM's rules, which KVM's
        kvm_get_msr_common follows (the same code serves both)."""
        return x86.kvm_get_msr_common(self, index)

    def wrmsr(self, cpu, index: int, value: int) -> bool:
        return x86.kvm_set_msr_common(self, index, value)

    def hlt(self, cpu) -> None:
        cpu.halted = True
        cpu.pending = True
        cpu.stop_reason = HALTED

    def vmcall(self, cpu) -> None:
        cpu.r[0] = -KVM_ENOSYS & M64
