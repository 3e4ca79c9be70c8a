"""gdb's rule for stepping from a breakpoint: `stepi N` at a breakpoint's address executes
N instructions; the breakpoint under the PC does not stop the first one again. Under the
KVM model the first instruction can exit (an EPT violation on its fetch or its data) and
run again after the entry: that repeat is the same instruction, not a new arrival."""

from __future__ import annotations

import capstone

from elftools.elf.elffile import ELFFile

from tests.helpers import kut_image, run_cli


def _addresses(code: bytes, address: int, bits: int, n: int) -> list[int]:
    mode = capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32
    cs = capstone.Cs(capstone.CS_ARCH_X86, mode)
    return [i.address for i in cs.disasm(code, address, n)]


def _stop_address(out: str) -> int:
    line = next(l for l in out.splitlines() if l.startswith("0x"))
    return int(line.split()[0], 16)


def test_stepi_from_a_breakpoint_at_the_raw_entry():
    code = open("programs/smep_flip.bin", "rb").read()
    rc, out, err = run_cli("-batch", "-ex", "break *0x100000", "-ex", "stepi",
                           "programs/smep_flip.bin")
    assert rc == 0, err
    assert "Breakpoint 1," not in out
    assert _stop_address(out) == _addresses(code, 0x100000, 64, 2)[1]


def test_stepi_3_from_a_breakpoint_at_the_multiboot_entry():
    path = kut_image("pku.flat")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        entry = elf["e_entry"]
        seg = next(s for s in elf.iter_segments()
                   if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= entry < s["p_vaddr"] + s["p_filesz"])
        code = seg.data()[entry - seg["p_vaddr"]:]
    rc, out, err = run_cli("-batch", "-ex", "break start", "-ex", "stepi 3", str(path))
    assert rc == 0, err
    assert "Breakpoint 1," not in out
    assert _stop_address(out) == _addresses(code, entry, 32, 4)[3]
    assert "(32-bit protected mode)" in out
