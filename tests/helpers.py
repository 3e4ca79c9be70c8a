"""Shared test helpers: build a booted machine from assembly text or bytes."""

from __future__ import annotations

from functools import lru_cache

from kvmdbg.cpu.executor import run
from kvmdbg.kvm.boot import LOAD_ADDRESS, Program, boot
from kvmdbg.kvm.vm import Vm


@lru_cache(maxsize=None)
def _ks():
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    return Ks(KS_ARCH_X86, KS_MODE_64)


def asm(source: str, address: int = LOAD_ADDRESS) -> bytes:
    """Assemble Intel-syntax source with keystone."""
    code, _ = _ks().asm(source, address)
    return bytes(code or b"")


def machine(code, mem: int = 16 << 20, vcpus: int = 1, arg: int = 0, kvm=None):
    """A VM booted per the boot contract with `code` (asm text or bytes) at 0x100000.

    With kvm=None the CPU runs as bare hardware (architecture tests); with a profile
    name it runs under the KVM model."""
    if isinstance(code, str):
        code = asm(code)
    if kvm is None:
        vm = Vm(mem, vcpus, bare=True)
    else:
        from kvmdbg.kvm.profiles import get_profile
        vm = Vm(mem, vcpus, profile=get_profile(kvm))
    boot(vm, Program(code), arg)
    return vm, vm.vcpus[0].cpu


def run_until_halt(cpu, limit: int = 1_000_000) -> str:
    return run(cpu, limit)


def run_program(name: str, kvm: str = "v6.12", vcpus: int = 1, arg: int = 0, knobs=(),
                events: bool = False, max_steps: int = 10**9):
    """Boot programs/NAME.bin under a KVM profile and run it until every vCPU halts."""
    from pathlib import Path

    from kvmdbg.kvm.boot import load_program, make_vm
    from kvmdbg.kvm.scheduler import run_vm
    root = Path(__file__).resolve().parent.parent
    vm = make_vm(load_program(str(root / "programs" / f"{name}.bin")), kvm, knobs, vcpus,
                 16 << 20, arg, keep_events=10**7 if events else 0)
    vm.stop = run_vm(vm, max_steps)
    return vm
