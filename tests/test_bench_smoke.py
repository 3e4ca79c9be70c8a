"""The benchmark scripts still run (figures are printed by bench/, never asserted here)."""

import importlib.util
from pathlib import Path

from kvmdbg.kvm.boot import Program, load_program

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_interpreter_bench_runs_its_loops():
    b = _load("bench_interpreter")
    for code in (b.ALU_LOOP, b.MEM_LOOP):
        ips, n = b.measure(code, 5000)
        assert n == 5000 and ips > 0
    assert b.bytes_per_page(64) > 4096
    assert b.startup_seconds() > 0


def test_kvm_bench_runs_its_figures():
    b = _load("bench_kvm")
    assert b.flips_per_second("v6.12", Program(b.BARE_FLIP_LOOP), 50) > 0
    assert b.flips_per_second("v5.15", load_program(str(BENCH.parent / "programs" / "smep_flip.bin")), 5) > 0
    assert b.zap_rate(600) > 0
    assert 0 < b.bytes_per_spte(600) < 64
