"""x as gdb does it: $_ and $__ after every format, and negative counts (issue 13)."""

import re

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb_program, oracle_program

__all__ = ["oracle_program"]


def _shape(line: str) -> str:
    """A value line with its address and symbol made generic, and gdb's type names ours."""
    line = re.sub(r"0x[0-9a-f]+", "ADDR", line)
    line = re.sub(r"<[A-Za-z_]+(\+\d+)?>", "<SYM>", line)
    line = re.sub(r"= -?\d+$", "= N", line)
    return re.sub(r"int(\d+)_t", r"s\1", line)


@needs_gdb_program
def test_dollar_underscore_after_every_format_is_gdbs(oracle_program):
    # gdb sets $_ to the address of the last unit examined, typed as a pointer to the unit
    # ((int8_t *) after x/2i and x/s, (int64_t *) after x/2gx), and $__ to its contents,
    # except after x/i and x/s, whose units it never fetches as values: $__ is void.
    cmds = ["x/2i $pc", "p $_", "p $__", "x/2gx $sp", "p $_", "p $__", "x/xb $pc", "p $__",
            "x/2dw $pc", "p $_", "p $_ + 1", "x/s $pc", "p $_", "p $__"]
    theirs = [ln for ln in gdb("starti", *cmds, program=oracle_program) if ln.startswith("$")]
    rc, out, err = kvmdbg(*cmds)
    ours = [ln for ln in out if ln.startswith("$")]
    assert [_shape(x) for x in ours] == [_shape(x) for x in theirs]
    assert ours[:3] == ["$1 = (s8 *) 0x100003 <start+3>", "$2 = void", "$3 = (s64 *) 0x80008"]
    assert ours[4] == "$5 = 73"                 # x/xb: the byte 0x49 as an int8
    assert ours[5:7] == ["$6 = (s32 *) 0x100004 <start+4>", "$7 = (s32 *) 0x100008 <start+8>"]
    assert ours[7:] == ["$8 = (s8 *) 0x100000 <start>", "$9 = void"]


@needs_gdb_program
def test_a_negative_count_examines_backward_as_gdb_does(oracle_program):
    # gdb: x/-2xg ADDR shows the two quadwords below ADDR, in increasing order; $_ is the
    # last shown, and a plain `x` goes on from the lowest address.
    theirs = gdb("starti", "x/-2xg $sp+16", "p $_", "x", program=oracle_program)[-3:]
    assert re.fullmatch(r"0x[0-9a-f]+:\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}", theirs[0])
    low = int(theirs[0].split(":")[0], 16)
    assert int(theirs[1].split()[-1], 16) == low + 8 and theirs[2].startswith(f"{low:#x}:")
    rc, out, err = kvmdbg("set *(u64 *)0x1fff8 = 7", "x/-2xg 0x20008", "p $_", "x")
    assert out == ["0x1fff8:\t0x0000000000000007\t0x0000000000000000",
                   "$1 = (s64 *) 0x20000", "0x1fff8:\t0x0000000000000007"], err
    rc, out, err = kvmdbg("x/-1i $pc", "x/-2s 0x100080", "x/99999999999x 0", "p 1")
    assert err == [
        "x/-Ni is not supported: without line information there is no telling where the "
        "instructions before an address start.",
        "x/-Ns is not supported: examine strings forward from their start.",
        "Item count 99999999999 out of range: 1 to 2147483647 units (-1 to -2147483647 examine "
        "backward).  Usage: x[/NFU] [ADDR]"]
    assert out == ["$1 = 1"]
