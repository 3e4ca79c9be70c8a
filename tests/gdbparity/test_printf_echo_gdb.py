"""printf's conversions and echo's newlines as gdb has them (issue 13)."""

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb

FORMATS = [
    'printf "%#lx|%#o|%#x|%#o|%#X|%5.3d|%-#8x|%.0d|%#.3o|%05.3d|%+d|% d|%-5d|%05d|%#5x|%#05x\\n", '
    '0, 0, 26, 8, 26, 7, 255, 0, 8, 7, 5, 5, 3, 42, 1, 1',
    'printf "%#.0x|%#.0o|%.0x|%x|%lu|%lo\\n", 0, 0, 0, 0, 5, 8',
    'printf "%p|%p|%c|%5c|%-3c|\\n", 0, 4096, 65, 66, 67',
    'printf "%%|%d\\n", 3',
    'printf "%5%|\\n"',
]


@needs_gdb
def test_printf_conversions_are_gdbs():
    # gdb (and C): %#lx of 0 is 0, %#o of 8 is 010, %.0d of 0 prints nothing, %p of 0 is
    # (nil) (glibc); a %% with a width is refused.
    theirs = gdb(*FORMATS)
    rc, out, err = kvmdbg(*FORMATS)
    assert out + err == theirs[:4] + [theirs[4]]
    assert out[0] == "0|0|0x1a|010|0X1A|  007|0xff    ||010|  007|+5| 5|3    |00042|  0x1|0x001"
    assert err == ["Unrecognized format specifier '%' in printf"]


def test_printf_strings_and_64_bit_values():
    # gdb reads a string argument from the inferior; kvmdbg takes a literal or an address.
    rc, out, err = kvmdbg('printf "%s|%.2s|%5s|%-5s|%s|\\n", "abc", "abc", "ab", "ab", message',
                          'printf "%x %d\\n", -1, 0xffffffffffffffff')
    assert out == ["abc|ab|   ab|ab   |smep_flip: done", "|", "ffffffffffffffff -1"], err
