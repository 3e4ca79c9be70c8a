"""The benchmarks run, and what they print agrees with the work they say they measured.

Each bench/ script runs as a user runs it (a subprocess), with small parameters (--quick,
or one run for start-up), and its printed lines are checked. The speeds themselves are
never asserted (they measure the machine as much as kvmdbg); what could be wrong is:

- The project's rule for every benchmark: the time of a fixed pure-Python reference loop
  measured in the same run (bench/reference_loop.py), and next to each speed figure that
  figure divided by the loop's. Checked on every script in bench/, the ratio recomputed
  from the printed figure and loop time.
- The work behind each figure, against independent derivations: the loops' bytes against
  keystone assembling their source, instruction counts against unicorn running the same
  bytes, CR4 writes against the flips asked for (each flip of both flip programs is one MOV
  to CR4), #PF exits under shadow paging and SPTEs against the pages the guest touches.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_64, Uc
from unicorn import x86_const as U

from tests.helpers import asm, ept_sptes

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# How each benchmark runs small; a new benchmark needs an entry here.
QUICK_ARGS = {"bench_interpreter": ["--quick"], "bench_kvm": ["--quick"], "bench_startup": ["1"],
              "bench_kut": ["--quick"], "bench_scaling": ["--quick"], "bench_reverse": ["--quick"]}
BENCHMARKS = sorted(p.stem for p in BENCH.glob("bench_*.py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod                     # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=None)
def output(name: str) -> list[str]:
    p = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *QUICK_ARGS[name]], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def unicorn_instructions(code: bytes, rdx: int) -> int:
    """Instructions unicorn executes running code from 0x100000 (RDX = rdx, RSP = 0x80000,
    the first 32 MiB mapped, port writes ignored) up to and including its first HLT."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 32 << 20)
    uc.mem_write(0x100000, code)
    uc.reg_write(U.UC_X86_REG_RDX, rdx)
    uc.reg_write(U.UC_X86_REG_RSP, 0x80000)
    count = [0]

    def insn(uc, address, size, _):
        count[0] += 1
        if uc.mem_read(address, 1) == b"\xf4":
            uc.emu_stop()

    uc.hook_add(UC_HOOK_CODE, insn)
    uc.hook_add(UC_HOOK_INSN, lambda *a: None, None, 1, 0, U.UC_X86_INS_OUT)
    uc.emu_start(0x100000, 0x100000 + len(code))
    return count[0]


def number(text: str) -> float:
    return float(text.replace(",", ""))


def half_unit(text: str) -> float:
    """Half the last printed digit of a number: how far the printed value may be off."""
    return 0.5 * 10 ** -len(text.partition(".")[2])


REFERENCE = re.compile(r"reference loop: +([\d.]+) ms \(a fixed pure-Python loop of [\d,]+ "
                       r"iterations, best of \d+, in this run\)")
NUM = r"\d[\d,]*(?:\.\d+)?"
# The first number followed by a unit per second, or by ms; the ratio at the end of the line.
RATE = re.compile(rf"(?P<fig>{NUM}) (?P<m>M )?[A-Za-z#][A-Za-z# ]*/s .*= (?P<ratio>{NUM}) "
                  r"(?P<rm>M )?per reference loop$")
TIME = re.compile(rf"(?P<fig>{NUM}) ms .*= (?P<ratio>{NUM}) reference loops$")
END = re.compile(rf"reference loop at the end: {NUM} ms \([+-]\d+% from the start\)")


def test_every_benchmark_has_quick_arguments():
    assert set(BENCHMARKS) == set(QUICK_ARGS), "run each bench/ script small in QUICK_ARGS"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_prints_the_reference_loop_and_each_speed_divided_by_it(name):
    lines = output(name)
    ref = REFERENCE.fullmatch(lines[0])
    assert ref, lines[0]
    ref_ms = ref.group(1)
    assert END.fullmatch(lines[-1]), lines[-1]            # timed again after the figures
    figures = lines[1:-1]
    assert figures
    for line in figures:
        rate, time_ = RATE.search(line), TIME.search(line)
        if "/s " in line:
            assert rate, f"a speed without its ratio to the reference loop: {line!r}"
            scale = 1e6 if rate["m"] else 1.0
            fig, ratio = number(rate["fig"]) * scale, number(rate["ratio"]) * (1e6 if rate["rm"] else 1)
            fig_err, ratio_err = half_unit(rate["fig"]) * scale, half_unit(rate["ratio"]) * (1e6 if rate["rm"] else 1)
            ref_s, ref_err = number(ref_ms) / 1000, half_unit(ref_ms) / 1000
            # a rate divided by the loop's rate (1 / its time) is rate * time
            assert abs(ratio - fig * ref_s) <= ratio_err + fig_err * ref_s + fig * ref_err + fig_err * ref_err, line
        elif " ms" in line:
            assert time_, f"a time without its ratio to the reference loop: {line!r}"
            fig, ratio, ref = number(time_["fig"]), number(time_["ratio"]), number(ref_ms)
            lo = (fig - half_unit(time_["fig"])) / (ref + half_unit(ref_ms))
            hi = (fig + half_unit(time_["fig"])) / (ref - half_unit(ref_ms))
            assert lo - half_unit(time_["ratio"]) <= ratio <= hi + half_unit(time_["ratio"]), line
        else:
            assert "bytes per" in line, f"neither a speed, a time nor a size: {line!r}"
            assert "reference loop" not in line                     # sizes do not depend on speed


def test_interpreter_loops_are_their_source_and_count_their_instructions():
    b = _load("bench_interpreter")
    lines = {line.split(":")[0]: line for line in output("bench_interpreter")}
    for label, source, build, key in (("alu loop", b.ALU_SOURCE, b.alu_loop, "alu_iterations"),
                                      ("memory loop", b.MEM_SOURCE, b.mem_loop, "mem_iterations")):
        iterations = b.QUICK[key]
        for n in (iterations, 3_000_000):            # the hand-assembled bytes, any count
            assert build(n) == asm(source.format(iterations=n)), label
        m = re.search(r"\(([\d,]+) instructions, ([\d,]+) iterations", lines[label])
        assert number(m.group(2)) == iterations
        assert number(m.group(1)) == unicorn_instructions(build(iterations), 0), label
    # Each touched guest page is backed by a 4 KiB host page, so never less than that.
    m = re.search(r"(\d+) bytes per touched guest page \(([\d,]+) pages\)", lines["host memory"])
    assert int(m.group(1)) > 4096 and number(m.group(2)) == b.QUICK["pages"]


def test_kvm_bench_flips_faults_and_zaps_are_the_work_asked_for():
    b = _load("bench_kvm")
    lines = output("bench_kvm")
    smep = (ROOT / "programs" / "smep_flip.bin").read_bytes()
    # One MOV to CR4 per flip in both programs: BARE_FLIP_LOOP's source (its comment), and
    # smep_flip.S, whose only CR4 write is in the flip loop.
    assert len(re.findall(r"^\s*mov\s+cr4,", (ROOT / "programs" / "smep_flip.S").read_text(), re.M)) == 1
    assert b.BARE_FLIP_LOOP == asm("mov rbx, rdx; mov rax, cr4; l: xor rax, 1 << 20; mov cr4, rax; "
                                   "dec rbx; jnz l; hlt")
    seen = set()
    for line in lines:
        m = re.match(r"(\S+) +(bare flip loop|16-page working set): .* \(([\d,]+) flips: ([\d,]+) "
                     r"CR4 writes, ([\d,]+) instructions; best of 1\)", line)
        if not m:
            continue
        profile, kind = m.group(1), "bare" if m.group(2) == "bare flip loop" else "smep"
        flips, writes, insns = (int(number(g)) for g in m.group(3, 4, 5))
        assert flips == b.QUICK[kind][profile] and writes == flips, line
        code = b.BARE_FLIP_LOOP if kind == "bare" else smep
        assert insns == unicorn_instructions(code, flips), line
        seen.add((profile, kind))
    assert seen == {(p, k) for p in ("v5.15", "v6.1", "v6.12", "shadow") for k in ("bare", "smep")}

    # Under shadow paging nothing is mapped until KVM builds the shadow entry from a #PF
    # exit: TOUCH_LOOP writes once to each of `pages` fresh pages, and the first fetch of
    # its code page faults too; it uses no stack. Each of those faults is fixed.
    assert b.TOUCH_LOOP == asm("mov rsi, 0x400000; mov rcx, rdx; l: mov [rsi], rcx; "
                               "add rsi, 4096; dec rcx; jnz l; hlt")
    pages = b.QUICK["fault_pages"]
    line = next(line for line in lines if line.startswith("shadow guest page faults"))
    m = re.search(r"\(([\d,]+) pages: ([\d,]+) #PF exits, ([\d,]+) fixed\)", line)
    assert [int(number(g)) for g in m.groups()] == [pages, pages + 1, pages + 1]

    # The zap maps `pages` 4 KiB frames from gfn 0x1000 into a fresh root and zaps it: every
    # SPTE the mapping created (leaves and the EPT tables' entries above them) is zapped.
    pages = b.QUICK["zap_pages"]
    sptes = ept_sptes(range(0x1000, 0x1000 + pages))
    line = next(line for line in lines if line.startswith("TDP MMU zap"))
    m = re.search(r"\(([\d,]+) pages: ([\d,]+) SPTEs, ([\d,]+) zapped, ([\d,]+) left\)", line)
    assert [int(number(g)) for g in m.groups()] == [pages, sptes, sptes, 0]
    line = next(line for line in lines if line.startswith("TDP MMU memory"))
    assert re.search(r"bytes per SPTE \(([\d,]+) SPTEs\)", line).group(1) == f"{sptes:,}"


def test_startup_bench_best_is_not_above_its_median():
    for line in output("bench_startup")[1:-1]:
        m = re.search(r"median +(\d+) ms +best +(\d+) ms", line)
        assert m and int(m.group(2)) <= int(m.group(1)), line
