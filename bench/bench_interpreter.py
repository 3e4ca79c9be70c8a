#!/usr/bin/env python3
"""Interpreter benchmarks: guest instructions per second and bytes per touched guest page.

Run: python bench/bench_interpreter.py          (about 20 s on the project's 2-core machine)
     python bench/bench_interpreter.py --quick  (small parameters: checks the figures run)
Prints the reference loop's time (bench/reference_loop.py), then one line per figure with
the work it measured and, for speeds, the figure divided by the reference loop's. Nothing
here is asserted: targets live in the README.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reference_loop import Reference  # noqa: E402
from kvmdbg import collector  # noqa: E402
from kvmdbg.cpu.executor import run  # noqa: E402
from kvmdbg.kvm.boot import Program, boot  # noqa: E402
from kvmdbg.kvm.vm import Vm  # noqa: E402

collector.tune()        # the collector settings of the command line, whose speed this times

# Hand-assembled so the benchmark needs nothing but kvmdbg; the sources are below (and
# tests/test_bench_smoke.py assembles them to check the bytes).
ALU_SOURCE = """
    mov rcx, {iterations}
l:  add rax, rcx
    xor rbx, rax
    sub rdx, 1
    lea r8, [rax + rbx]
    shl r8, 3
    dec rcx
    jnz l
    hlt
"""

MEM_SOURCE = """
    mov rcx, {iterations}
l:  mov rsi, 0x200000
    mov edx, 16
t:  mov [rsi], rcx
    add rax, [rsi + 8]
    add rsi, 0x1000
    dec edx
    jnz t
    dec rcx
    jnz l
    hlt
"""


def _imm32(n: int) -> str:
    return n.to_bytes(4, "little").hex()


def alu_loop(iterations: int) -> bytes:
    return bytes.fromhex(
        "48c7c1" + _imm32(iterations) +   # mov rcx, iterations
        "4801c8"              # l: add rax, rcx
        "4831c3"              #    xor rbx, rax
        "4883ea01"            #    sub rdx, 1
        "4c8d0418"            #    lea r8, [rax + rbx]
        "49c1e003"            #    shl r8, 3
        "48ffc9"              #    dec rcx
        "75e9"                #    jnz l
        "f4")                 # hlt


def mem_loop(iterations: int) -> bytes:
    return bytes.fromhex(
        "48c7c1" + _imm32(iterations) +   # mov rcx, iterations
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


# The parameters of a run: loop iterations, and guest pages touched for the memory figure.
FULL = {"alu_iterations": 3_000_000, "mem_iterations": 100_000, "pages": 4096, "load_mib": 32,
        "breakpoints": 10_000}
QUICK = {"alu_iterations": 2_000, "mem_iterations": 100, "pages": 64, "load_mib": 1, "breakpoints": 100}


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


def load_seconds(mib: int) -> float:
    """Boot a raw program of `mib` MiB (issue #15: linear in the program's size)."""
    code = b"\x90" * ((mib << 20) - 1) + b"\xf4"
    t = time.perf_counter()
    vm = Vm((mib << 20) + (2 << 20) + (1 << 20), 1, bare=True)
    boot(vm, Program(code))
    return time.perf_counter() - t


def breakpoints_seconds(n: int) -> float:
    """Set n breakpoints as a script would (issue #15: linear in n)."""
    from kvmdbg.debug.engine.session import Session
    root = Path(__file__).resolve().parent.parent
    s = Session.load(str(root / "programs" / "smep_flip.bin"), out=lambda *a: None,
                     err=lambda *a: None)
    t = time.perf_counter()
    for i in range(n):
        s.execute(f"break *{0x100000 + i}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = QUICK if "--quick" in (sys.argv[1:] if argv is None else argv) else FULL
    ref = Reference()
    print(ref.line())
    for name, code, iterations, what in (
            ("alu loop:", alu_loop(p["alu_iterations"]), p["alu_iterations"], ""),
            ("memory loop:", mem_loop(p["mem_iterations"]), p["mem_iterations"], ", 16 pages")):
        ips, n = measure(code, 1 << 62)                  # each loop ends at its hlt
        print(f"{name:<17} {ips / 1e6:6.2f} M guest instructions/s ({n:,} instructions, "
              f"{iterations:,} iterations{what}) = {ref.per_loop(ips) / 1e6:.3f} M per reference loop")
    print(f"host memory:      {bytes_per_page(p['pages']):8.0f} bytes per touched guest page "
          f"({p['pages']:,} pages)")
    boot_s = startup_seconds()
    print(f"boot --mem 1G:    {boot_s * 1000:8.1f} ms = {ref.loops(boot_s):.3f} reference loops")
    mib = p["load_mib"]
    load_s = load_seconds(mib)
    print(f"load {mib} MiB raw:  {load_s * 1000:8.1f} ms = {ref.loops(load_s):.3f} reference loops")
    nbp = p["breakpoints"]
    bp_s = breakpoints_seconds(nbp)
    print(f"{nbp:,} breakpoints: {bp_s * 1000:8.1f} ms = {ref.loops(bp_s):.3f} reference loops")
    print(ref.end_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
