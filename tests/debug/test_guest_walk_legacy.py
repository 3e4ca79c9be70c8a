"""The debugger's side-effect-free walk for PAE and 32-bit guests.

Oracle: the hardware walker, which tests/cpu/test_legacy_paging.py checks against unicorn:
wherever the hardware translates, the debugger must show the same gpa; where the hardware
finds a not-present entry, the debugger must show no translation. The walk must leave
memory as it was (no accessed/dirty flags).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from kvmdbg.debug.engine import guest_walk
from tests.cpu import test_legacy_paging as H
from tests.debug.util import run, session


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(H.cases(rsvd=False))
def test_debugger_walk_agrees_with_the_hardware(case):
    mem, regs, va, entries, kind = case
    vm, cpu = H.new_cpu(mem)
    H.enter_paging(cpu, **regs)
    before = {pa: vm.peek_gpa(pa, size) for pa, size in entries}
    w = guest_walk.walk(vm, cpu, va)
    assert {pa: vm.peek_gpa(pa, size) for pa, size in entries} == before
    hw = H.kvmdbg_walk(cpu, va, H.KIND_ACC[kind])
    if hw[0] == "ok":
        assert w.gpa == hw[1]
    elif not hw[1] & H.EC_P:
        assert w.gpa is None and "not present" in w.error


def test_translate_shows_the_pdpte_register_and_the_page():
    s = session("hlt")
    cpu = s.cpu
    for pa, data in H.two_level(True, H.RW, H.RW).items():
        s.vm.write_gpa(pa, data)
    cpu.set_cr4(H.CR4_PAE)
    cpu.set_cr3(H.PDPT_PAGE)
    cpu.set_efer(0)
    cpu.set_cr0(H.CR0_PE | H.CR0_ET | H.CR0_PG)
    cpu.set_pdptes(tuple(0x102000 + k * 0x1000 | H.P for k in range(4)))
    out = "\n".join(run(s, f"translate {H.VA_RIGHTS:#x}"))
    assert "PDPTE[1]    (register)" in out
    assert f"gpa {H.DATA_PAGE | (H.VA_RIGHTS & 0xFFF):#x} (4K page" in out
    out = "\n".join(run(s, "translate 0x100000000"))
    assert "beyond 32 bits" in out and "Traceback" not in out
