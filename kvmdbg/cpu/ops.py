"""CpuOps: everything the CPU asks of the world outside it (KVM's x86_emulate_ops idea).

The kvm layer implements this; tests can implement it over a bytearray. A method
may raise an exception the run loop understands (GuestFault to inject one into
the guest, or anything the implementer defines to stop the run).
"""

from __future__ import annotations

from typing import Protocol

from kvmdbg.generation import Generation


class CpuOps(Protocol):
    ep4ta: int        # tag of the second-level tables in use (EPTP); 0 without EPT
    # A kvmdbg.generation.Generation whose value moves whenever translate_gpa's answers may
    # change (the CPU keeps walk answers only while it stands still).
    gpa_generation: Generation

    def translate_gpa(self, gpa: int, kind: int, walk: bool):
        """(host page or None for MMIO, hpa of the page, writable, executable) for a 4 KiB gpa.

        kind is walker.READ/WRITE/FETCH; walk is True for the CPU's own
        paging-structure accesses. Raise to refuse (an EPT violation). A hypervisor may
        instead handle the exit and enter again where nothing could tell the difference,
        and answer: the walk goes on as the restarted instruction's would (EptHardware's
        exit_in_place hook; cpu.in_walk and cpu.in_delivery say whether it may, and
        Vcpu.exit_in_place says when it does)."""

    def mmio_read(self, gpa: int, size: int) -> int: ...

    def mmio_write(self, gpa: int, size: int, value: int) -> None: ...

    def set_cr(self, cpu, n: int, value: int) -> None:
        """MOV to CR0/CR3/CR4 (and CR8). The architectural path is cpu.arch_set_cr."""

    def set_efer(self, cpu, value: int) -> None:
        """WRMSR to IA32_EFER. The architectural path is cpu.arch_set_efer."""

    def pio_in(self, cpu, port: int, size: int) -> int: ...

    def pio_out(self, cpu, port: int, size: int, value: int) -> None: ...

    def cpuid(self, cpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]: ...

    def rdmsr(self, cpu, index: int) -> int | None:
        """RDMSR of an MSR the processor does not hold (cpu/system.py rdmsr): its value,
        or None if it is nobody's (#GP)."""

    def wrmsr(self, cpu, index: int, value: int) -> bool:
        """WRMSR of an MSR the processor does not hold: False if nobody's or refused (#GP)."""

    def hlt(self, cpu) -> None: ...

    def vmcall(self, cpu) -> None: ...

    def handle_exit(self, cpu, exit_) -> None:
        """A VmExit raised in the middle of an instruction (an EPT violation or misconfig,
        a #PF intercept): the hypervisor handles it; raising GuestFault injects one."""

    def invlpg(self, cpu, va: int) -> None:
        """INVLPG with INVLPG exiting on (shadow paging): the hypervisor invalidates."""

    def reenter(self) -> bool:
        """Optional: after a VM exit the run loop calls it to enter guest mode again at
        once; True if it did (the run goes on), False to stop with the exit."""

    # Shadow paging only (walker.walk_shadow walks the hypervisor's tables in host memory):
    host_pages: dict          # pfn -> bytearray

    def hpa_to_gpa(self, hpa: int) -> int:
        """The guest-physical address behind a host page the shadow tables map."""

