"""Numbers that do not fit their field are refused with one line naming the field and its
range, and the session goes on (issue 13)."""

import pytest

from tests.gdbparity.oracle import SMEP, gdb, kvmdbg, needs_gdb, raw_program
from tests.helpers import run_cli


@pytest.mark.parametrize("option, value, message", [
    ("--arg", "18446744073709551616", "--arg must be between -9223372036854775808 and "
     "18446744073709551615 (RDX is 64 bits) (got 18446744073709551616)."),
    ("--arg", "-9223372036854775809", "--arg must be between -9223372036854775808 and "
     "18446744073709551615 (RDX is 64 bits) (got -9223372036854775809)."),
    ("--vcpus", "99999999999999999999", "--vcpus must be between 1 and 8 (got "
     "99999999999999999999)."),
    ("--vcpus", "0", "--vcpus must be between 1 and 8 (got 0)."),
    ("--mem", "-1", "--mem must be between 2M and 1G (got -1 bytes)."),
    ("--mem", "2G", "--mem must be between 2M and 1G (got 2147483648 bytes)."),
])
def test_command_line_numbers_out_of_range(option, value, message):
    rc, out, err = run_cli("-batch", option, value, "-ex", "p 1", SMEP)
    assert rc != 0 and out == ""
    assert err.splitlines()[0] == f"kvmdbg: {message}"


def test_arg_takes_the_whole_64_bits_either_sign():
    rc, out, err = run_cli("-batch", "--arg", "-1", "-ex", "p/x $rdx", SMEP)
    assert out == "$1 = 0xffffffffffffffff\n"
    rc, out, err = run_cli("-batch", "--arg", "18446744073709551615", "-ex", "p/x $rdx", SMEP)
    assert out == "$1 = 0xffffffffffffffff\n"


@needs_gdb
def test_set_height_refuses_what_gdb_refuses():
    # gdb 13: `set height -1` is "integer -1 out of range" (0 or "unlimited" is unlimited,
    # 4294967295 is out of range too); a bare `set height` asks for an argument.
    theirs = gdb("set height -1", "set height 4294967295", "set height", "set height 1+1",
                 "show height")
    assert theirs == ["integer -1 out of range", "integer 4294967295 out of range",
                      'Argument required (integer to set it to, or "unlimited").',
                      "Number of lines gdb thinks are in a page is 2."]
    rc, out, err = kvmdbg("set height -1", "set height 4294967295", "set height",
                          "set height 1+1", "show height", "set width -5", "show width")
    assert err == ['height must be between 0 and 4294967294, or "unlimited" (got -1).',
                   'height must be between 0 and 4294967294, or "unlimited" (got 4294967295).',
                   'Argument required (integer to set it to, or "unlimited").  Usage: set height N',
                   'width must be between 0 and 4294967294, or "unlimited" (got -5).']
    assert out == ["Number of lines kvmdbg thinks are in a page is 2.",
                   "Number of characters kvmdbg thinks are in a line is unlimited."]


def test_command_arguments_out_of_range_are_one_line_each():
    rc, out, err = kvmdbg(
        "x/-1xg 0x100008", "info events -n -5", "set arg 18446744073709551616", "stepi 2147483648",
        "break flip", "ignore 1 2147483648", "enable count 0 1", "delete 1-99999999",
        "display/-2i $pc", "continue", "info spte gfn:-1", "info spte gfn:0x10000000000",
        "info sptes gfn:5-1", "info sptes gfn:-1", "info sptes gfn:0x100-0x100", "p 42")
    assert err == [
        "info events -n must be between 1 and 2147483647 (got -5).",
        "set arg must be between -9223372036854775808 and 18446744073709551615 (RDX is 64 bits) "
        "(got 18446744073709551616).",
        "Count 2147483648 out of range: 1 to 2147483647.  Usage: stepi [N]",
        "The ignore count must be between 0 and 2147483647 (got 2147483648).",
        "The hit count must be between 1 and 2147483647 (got 0).",
        "Bad breakpoint range '1-99999999': at most 100,000 numbers in one range.",
        "A negative count is for x only (display shows forward).  Usage: display[/FMT] [EXPR]",
        "gfn must be between 0 and 1099511627775 (0xffffffffff) (got -1).",
        "gfn must be between 0 and 1099511627775 (0xffffffffff) (got 1099511627776).",
        "gfn:5-1: the end of the range is below its start.",
        "gfn:-1: a gfn is not negative."]
    assert out[0] == "0x100000 <start>:\t0x7520e9c149d18949"        # x/-1 is gdb's backward x
    assert out[-3:] == ["gfn 0x100 spte 0x60000001000cb37 (r w x) level 1", "1 leaf SPTEs.",
                        "$1 = 42"]
    assert rc == 1


@needs_gdb
def test_backtrace_with_a_negative_count_shows_the_outermost_frames(tmp_path):
    # gdb: `bt -N` prints the outermost N frames, `bt 0` none (on any program).
    assert gdb("bt -1") == ["No stack."]
    rc, out, err = kvmdbg("break c", "continue", "bt", "bt -1", "bt -2", "bt 1", "bt 0", "p 1",
                          program=raw_program(tmp_path))
    frames = out[out.index("#0  0x10001c <c>"):]
    assert frames == ["#0  0x10001c <c>", "#1  0x10001b <b+6>", "#2  0x100013 <a+6>",
                      "#3  0x100005 <start+5>",
                      "#3  0x100005 <start+5>",
                      "#2  0x100013 <a+6>", "#3  0x100005 <start+5>",
                      "#0  0x10001c <c>",
                      "$1 = 1"]


def test_a_cost_is_a_cycle_count_that_fits_32_bits():
    rc, out, err = kvmdbg("set cost vmexit 99999999999999999999999", "set cost vmexit -1",
                          "set cost vmexit 4294967295")
    assert err == ["cost vmexit must be between 0 and 4294967295 cycles (got "
                   "99999999999999999999999).",
                   "cost vmexit must be between 0 and 4294967295 cycles (got -1)."]
    assert out == ["cost vmexit = 4294967295"]
