#!/usr/bin/env python3
"""Interpreter benchmarks: guest instructions per second and bytes per touched guest page.

Run: python bench/bench_interpreter.py          (about 20 s on the project's 2-core machine)
Prints one line per figure. Nothing here is asserted: targets live in the README.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvmdbg.cpu.executor import run  # noqa: E402
from kvmdbg.kvm.boot import Program, boot  # noqa: E402
from kvmdbg.kvm.vm import Vm  # noqa: E402

# Hand-assembled so the benchmark needs nothing but kvmdbg (sources in the comments).
ALU_LOOP = bytes.fromhex(
    "48c7c1c0c62d00"      # mov rcx, 3000000
    "4801c8"              # l: add rax, rcx
    "4831c3"              #    xor rbx, rax
    "4883ea01"            #    sub rdx, 1
    "4c8d0418"            #    lea r8, [rax + rbx]
    "49c1e003"            #    shl r8, 3
    "48ffc9"              #    dec rcx
    "75e9"                #    jnz l
    "f4")                 # hlt

MEM_LOOP = bytes.fromhex(
    "48c7c1a0860100"      # mov rcx, 100000
    "48c7c600002000"      # l: mov rsi, 0x200000
    "ba10000000"          #    mov edx, 16
    "48890e"              # t: mov [rsi], rcx
    "48034608"            #    add rax, [rsi + 8]
    "4881c600100000"      #    add rsi, 0x1000
    "ffca"                #    dec edx
    "75ee"                #    jnz t
    "48ffc9"              #    dec rcx
    "75dd"                #    jnz l
    "f4")                 # hlt


def measure(code: bytes, steps: int) -> tuple[float, int]:
    vm = Vm(64 << 20, 1, bare=True)
    boot(vm, Program(code))
    cpu = vm.vcpus[0].cpu
    t = time.perf_counter()
    run(cpu, steps)
    dt = time.perf_counter() - t
    return cpu.steps / dt, cpu.steps


def bytes_per_page(pages: int = 4096) -> float:
    vm = Vm(64 << 20, 1, bare=True)
    boot(vm, Program(b"\xf4"))
    before = vm.host.touched_pages()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for i in range(pages):
        vm.write_gpa(0x1000000 + i * 4096, b"\x01")
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert vm.host.touched_pages() - before == pages
    return (used - base) / pages


def startup_seconds() -> float:
    t = time.perf_counter()
    vm = Vm(1 << 30, 1, bare=True)
    boot(vm, Program(b"\xf4"))
    return time.perf_counter() - t


def main() -> int:
    ips, n = measure(ALU_LOOP, 30_000_000)
    print(f"alu loop:         {ips / 1e6:6.2f} M guest instructions/s ({n} instructions)")
    ips, n = measure(MEM_LOOP, 30_000_000)
    print(f"memory loop:      {ips / 1e6:6.2f} M guest instructions/s ({n} instructions, 16 pages)")
    print(f"host memory:      {bytes_per_page():8.0f} bytes per touched guest page")
    print(f"boot --mem 1G:    {startup_seconds() * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
