"""Small command-line and wording fixes of issue 13."""

from tests.helpers import run_cli

SMEP = "programs/smep_flip.bin"


def test_a_second_program_path_is_named_as_such():
    # gdb takes a second path as a core file; kvmdbg runs one raw program.
    rc, out, err = run_cli(SMEP, "programs/pvshim.bin")
    assert rc == 2 and out == ""
    assert err.splitlines()[0] == ("kvmdbg: only one program may be given (the second is "
                                   "'programs/pvshim.bin')")
    rc, out, err = run_cli("--frobnicate", SMEP)
    assert err.splitlines()[0] == "kvmdbg: unrecognized option '--frobnicate'"


def test_show_width_and_height_speak_for_kvmdbg():
    # gdb says "Number of characters gdb thinks are in a line is unlimited."
    rc, out, err = run_cli("-batch", "-ex", "set width 100", "-ex", "show width", "-ex", "show height",
                           SMEP)
    assert out.splitlines() == ["Number of characters kvmdbg thinks are in a line is 100.",
                                "Number of lines kvmdbg thinks are in a page is unlimited."]
