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


def machine(code, mem: int = 16 << 20, vcpus: int = 1, arg: int = 0):
    """A VM booted per the boot contract with `code` (asm text or bytes) at 0x100000."""
    if isinstance(code, str):
        code = asm(code)
    vm = Vm(mem, vcpus)
    boot(vm, Program(code), arg)
    return vm, vm.vcpus[0].cpu


def run_until_halt(cpu, limit: int = 1_000_000) -> str:
    return run(cpu, limit)
