"""Code that changes under the guest, debugged through the real CLI in batch mode.

A small program (assembled here with keystone, written with its .sym as a person would
build one) calls a function at gva 0x105000 five times while what backs that address
changes; each call leaves its result in a register:

  r8   first call: gpa 0x105000 holds `mov eax, 0x1111; ret`
  r9   after its PTE is pointed at gpa 0x106000 (`mov eax, 0x2222`) and INVLPG: SDM Vol. 3A
       4.10.4.1, INVLPG invalidates the page's TLB entries, so the fetch walks again
  r10  after the PTE is cleared (INVLPG) and made present again at 0x105000 without
       INVLPG: SDM 4.10.4.3, a P 0 -> 1 change needs no invalidation (no TLB entry is made
       from a not-present entry)
  r12  after the VMM overlays a fresh page at gfn 0x105 (port 0x510) and the guest writes
       `mov eax, 0x3333; ret` into it: KVM zaps the old slot's SPTEs and flushes the TLBs
       (kvm_arch_flush_shadow_memslot), and SDM 8.1.3 says a store followed by a jump to
       it runs the new code
  r13  after the overlay is removed (port 0x511): the original page is back

Under `--kvm shadow` the PTE writes are emulated by KVM (the tables are write-protected)
and INVLPG exits; under v6.12 the CPU walks the guest tables through EPT. Both run it
with `continue` (basic blocks) and one `stepi` per instruction, whose stop lines show the
instruction about to run and the registers it changed.
"""

from __future__ import annotations

import re

import pytest

from kvmdbg.kvm.boot import PT0
from tests.helpers import asm, patch_loop, run_cli

VA, OLD, NEW = 0x105000, 0x105000, 0x106000
PTE = PT0 + (VA >> 12) * 8
SOURCE = f"""
        mov rbx, {VA:#x}
        call rbx
        mov r8d, eax
        mov qword ptr [{PTE:#x}], {NEW | 3:#x}
        invlpg [rbx]
        jmp remapped
    .org 0x100040, 0xf4
    remapped:
        call rbx
        mov r9d, eax
        mov qword ptr [{PTE:#x}], 0
        invlpg [rbx]
        mov qword ptr [{PTE:#x}], {OLD | 3:#x}
        jmp again
    .org 0x100080, 0xf4
    again:
        call rbx
        mov r10d, eax
        jmp overlay
    .org 0x1000c0, 0xf4
    overlay:
        mov eax, {VA >> 12:#x}
        mov dx, 0x510
        out dx, eax
        mov dword ptr [rbx], 0x003333b8
        mov dword ptr [rbx + 4], 0xc300
        call rbx
        mov r12d, eax
        mov eax, {VA >> 12:#x}
        mov dx, 0x511
        out dx, eax
        call rbx
        mov r13d, eax
        hlt
    .org {OLD:#x}, 0xf4
    func:
        mov eax, 0x1111
        ret
    .org {NEW:#x}, 0xf4
        mov eax, 0x2222
        ret
"""
SYMBOLS = "100040 remapped\n100080 again\n1000c0 overlay\n105000 func\n"
RESULTS = ("r8", "r9", "r10", "r12", "r13")
EXPECTED = (0x1111, 0x2222, 0x1111, 0x3333, 0x1111)
PROFILES = ("shadow", "v6.12")


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "remap.bin"
    path.write_bytes(asm(SOURCE))
    (tmp_path / "remap.sym").write_text(SYMBOLS)
    return str(path)


def registers(out: str) -> tuple:
    """The values of `info registers r8 r9 r10 r12 r13` (the last such listing)."""
    found = dict(re.findall(r"^(r\d+) +\*?(0x[0-9a-f]+) ", out, re.M))
    return tuple(int(found[r], 16) for r in RESULTS)


@pytest.mark.parametrize("kvm", PROFILES)
def test_continue_runs_the_code_each_mapping_holds(program, kvm):
    rc, out, err = run_cli("-batch", "--kvm", kvm, "-ex", "continue",
                           "-ex", "info registers " + " ".join(RESULTS), program)
    assert rc == 0 and err == "", err
    assert "[all vCPUs halted]" in out
    assert registers(out) == EXPECTED


@pytest.mark.parametrize("kvm", PROFILES)
def test_stepi_shows_and_runs_the_code_each_mapping_holds(program, kvm, tmp_path):
    script = tmp_path / "steps.kvmdbg"
    script.write_text("stepi\n" * 40 + "info registers " + " ".join(RESULTS) + "\n")
    rc, out, err = run_cli("-batch", "--kvm", kvm, "-x", str(script), program)
    assert rc == 0 and err == "", err
    assert registers(out) == EXPECTED
    # At each stop on the function: what the debugger shows is about to run, then (at the
    # next stop) what it did to RAX.
    shown = re.findall(r"^=> 0x105000 <func>:\tmov eax, (0x[0-9a-f]+)$", out, re.M)
    assert [int(v, 16) for v in shown] == list(EXPECTED)
    ran = re.findall(r"^=> 0x105005 <func\+5>:\tret\nchanged: rax=(0x[0-9a-f]+)", out, re.M)
    assert [int(v, 16) for v in ran] == list(EXPECTED)


@pytest.mark.parametrize("kvm", PROFILES)
@pytest.mark.parametrize("run", ("continue", "stepi"))
def test_code_patched_by_the_debugger_runs(program, kvm, run):
    """At `again` the function at 0x105000 has run once (decoded, compiled); the debugger
    rewrites its immediate through gva. The next call runs the new bytes, and so does the
    one after the overlay is removed (the debugger wrote the original page)."""
    go = ["-ex", "continue"] if run == "continue" else ["-ex", "stepi"] * 40
    rc, out, err = run_cli("-batch", "--kvm", kvm, "-ex", "break again", "-ex", "continue",
                           "-ex", "set {u32}(func + 1) = 0x5555", "-ex", "x/i func", *go,
                           "-ex", "info registers " + " ".join(RESULTS), program)
    assert rc == 0 and err == "", err
    assert "   0x105000 <func>:\tmov eax, 0x5555" in out.splitlines()
    assert registers(out) == (0x1111, 0x2222, 0x5555, 0x3333, 0x5555)


# A loop that rewrites, in each pass, the immediate of the instruction right after the
# store (the same basic block): SDM Vol. 3A 11.6 / 19.29.1, P6 and later processors see a
# store to a prefetched instruction at once, so pass k loads the value stored in pass k.
PATCH_LOOP = patch_loop(4)


@pytest.mark.parametrize("run", ("continue", "stepi 100", "stepi"))
def test_loop_patching_its_next_instruction(tmp_path, run):
    path = tmp_path / "patch_loop.bin"
    path.write_bytes(asm(PATCH_LOOP))
    go = ["-ex", "stepi"] * 32 if run == "stepi" else ["-ex", run]
    rc, out, err = run_cli("-batch", *go, "-ex", "print/x $rdx", str(path))
    assert rc == 0 and err == "", err
    assert "step 30" in out                  # 1 + 4 passes of 7 + the HLT: all retired
    assert out.splitlines()[-1].endswith(" = 0x4321")
