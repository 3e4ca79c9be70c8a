"""Reading memory that is not there is an error, as gdb says it, wherever it is looked at
from; the guest's own accesses keep their MMIO behaviour (issue 13)."""

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb_program, oracle_program

__all__ = ["oracle_program"]


@needs_gdb_program
def test_a_gpa_in_no_memslot_cannot_be_accessed(oracle_program):
    # gdb: memory nothing backs is "Cannot access memory at address 0x0" (after the label).
    assert gdb("starti", "x/1bx 0", program=oracle_program)[-1] == \
        "0x0:\tCannot access memory at address 0x0"
    rc, out, err = kvmdbg("x/1bx gpa:0xffffff", "x/1bx gpa:0x1000000", "xp/1bx 0x7fffffffff",
                          "p *(u32 *)gpa:0x20000000", "set *(u8 *)gpa:0x1000000 = 1", "p 1")
    assert out == ["gpa:0xffffff:\t0x00", "$1 = 1"]          # the last byte of 16 MiB of RAM
    assert err == ["Cannot access memory at address gpa:0x1000000 (gpa is in no memslot)",
                   "Cannot access memory at address gpa:0x7fffffffff (gpa is in no memslot)",
                   "Cannot access memory at address gpa:0x20000000 (gpa is in no memslot)",
                   "Cannot access memory at address gpa:0x1000000 (gpa is in no memslot)"]


def test_a_gva_mapped_to_mmio_is_an_error_for_the_debugger_but_not_for_the_guest():
    # smap_mmio maps gva 0x20000000 to a gpa with no memslot and writes to it: the write
    # exits and KVM emulates it (MMIO); the debugger reading it gets an error naming the gpa.
    rc, out, err = kvmdbg("continue", "x/xw 0x20000000", "p *(u32 *)0x20000000",
                          "info stats ^mmio_exits", program="programs/smap_mmio.bin")
    assert "smap_mmio: ok" in out
    assert err == ["Cannot access memory at address 0x20000000 (gpa 0x20000000 is in no memslot)"] * 2
    mmio = next(ln for ln in out if ln.startswith("mmio_exits"))
    assert int(mmio.split()[1]) >= 1
