"""printf's conversions and echo's newlines as gdb has them (issue 13)."""

from tests.gdbparity.oracle import gdb, gdb_text, kvmdbg, needs_gdb
from tests.helpers import run_cli

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


ECHOES = ["echo b", "echo c\\n", "echo b", "p 1", 'printf "x"', "echo a \\", "echo y\\n",
          "output 5", "echo \\n", "echo  x  ", "echo \\\\", "echo \\n", "echo end"]


@needs_gdb
def test_echo_adds_no_newline_and_the_stream_goes_on_as_in_gdb():
    # gdb: `echo b` then `echo c\n` print "bc"; text left open is continued by the next
    # output, whatever it is ($1 = 1 after b), and the session may end without a newline.
    theirs = gdb_text(*ECHOES)
    args = [a for c in ECHOES for a in ("-ex", c)]
    rc, ours, err = run_cli("-batch", *args, "programs/smep_flip.bin")
    assert ours == theirs == "bc\nb$1 = 1\nxa y\n5\nx\\\nend"


@needs_gdb
def test_an_error_follows_open_echo_text_on_the_same_line_as_in_gdb(tmp_path):
    theirs = gdb_text("echo b", "frobnicate", "echo c\\n", stderr=True)
    script = tmp_path / "s.kvmdbg"
    script.write_text("echo b\necho c\\n\n")
    rc, out, err = run_cli("-batch", "-ex", "echo b", "-ex", "frobnicate", "-ex", "echo c\\n",
                           "-x", str(script), "programs/smep_flip.bin")
    assert theirs == 'bUndefined command: "frobnicate".  Try "help".\nc\n'
    assert out == "bc\nbc\n" and err == 'Undefined command: "frobnicate".  Try "help".\n'
