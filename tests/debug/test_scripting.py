"""source, define, document, echo, printf, shell, set logging, help, apropos, complete."""

from tests.debug.util import run, smep


def test_define_with_arguments_and_document():
    s = smep()
    run(s, "define addup", "echo $argc args: \\n", "output $arg0 + $arg1", "end")
    assert run(s, "addup 3 4") == ["2 args: ", "7"]
    assert run(s, "addup 1") == ["1 args: ", "Missing argument 1 in user function."]
    run(s, "document addup", "addup A B", "Print A + B.", "end")
    assert run(s, "help addup") == ["addup A B", "Print A + B."]
    assert "addup -- Print A + B." in run(s, "help user-defined")
    assert run(s, "define stepi") == ['"stepi" is a built-in command; choose another name.']
    assert run(s, "document nosuch") == ['Undefined user command "nosuch".']


def test_recursive_user_command_is_stopped_in_one_line():
    s = smep()
    run(s, "define loop", "loop", "end")
    assert run(s, "loop") == ["Max user call depth exceeded -- command aborted."]
    assert run(s, "p 1") == ["$1 = 1"]


def test_echo_and_printf_join_partial_lines_within_a_command():
    s = smep()
    run(s, "define both", "echo a", "echo b\\n", "echo c", "end")
    assert run(s, "both") == ["ab", "c"]
    assert run(s, 'printf "%d %x %#x %5s|%-3c| %u %o %p %%\\n", 10, 255, 255, "ab", 65, -1, 8, '
                  '0x1000') == ["10 ff 0xff    ab|A  | 18446744073709551615 10 0x1000 %"]
    assert run(s, 'printf "%s", message') == ["smep_flip: done"]
    assert run(s, 'printf "%d\\n"') == ["Wrong number of arguments for specified format-string"]
    assert run(s, "printf x") == [
        'Bad format string (it must be in double quotes).  Usage: printf "FORMAT", ARG...']


def test_shell_and_bang():
    s = smep()
    assert run(s, "shell echo hi; exit 3", "p $_shell_exitcode") == ["hi", "$1 = 3"]
    assert run(s, "!echo bang") == ["bang"]


def test_set_logging_writes_plain_text(tmp_path):
    s = smep()
    log = tmp_path / "out.txt"
    s.styler = lambda text, style: f"\x1b[1m{text}\x1b[0m"
    run(s, f"set logging file {log}", "set logging overwrite on")
    assert run(s, "set logging on") == [f"\x1b[1mCopying output to {log}.\x1b[0m"[4:-4]]
    run(s, "stepi", "set logging off")
    text = log.read_text()
    assert "\x1b" not in text
    assert "(kvmdbg) stepi\n0x100003 <start+3>, vcpu 0, step 1\n=> 0x100003" in text
    assert run(s, "set logging sideways")[0].startswith('Bad argument "sideways".  Usage: set logging')


def test_source_runs_a_file_and_stops_at_the_first_error(tmp_path):
    s = smep()
    inner = tmp_path / "inner.kvmdbg"
    inner.write_text("# a comment\n\necho inner\\n\nprint 1 +\necho never\\n\n")
    outer = tmp_path / "outer.kvmdbg"
    outer.write_text("echo outer\\n\nsource inner.kvmdbg\necho after\\n\n")
    out = run(s, f"source {outer}")
    assert out == ["outer", "inner", f"{inner}:4: Error in sourced command file:",
                   "A syntax error in expression, near `'."]       # the outer file stops too
    assert run(s, "source /nonexistent") == ["/nonexistent: No such file or directory."]
    unterminated = tmp_path / "open.kvmdbg"
    unterminated.write_text("define mycmd\necho hi\n")
    assert run(s, f"source {unterminated}")[-1] == 'End of file inside a "define" block (missing "end").'


def test_prefix_commands_alone_list_their_subcommands():
    """gdb's answer to a bare "info": one line naming what must follow, then the list."""
    s = smep()
    info = run(s, "info")
    assert info[:3] == ['"info" must be followed by the name of an info command.',
                        "List of info subcommands:", ""]
    names = [line.split(" -- ")[0] for line in info[3:]]
    assert names == sorted(names) and "info registers" in names and "info roots" in names
    trace = run(s, "trace")
    assert trace[:3] == ['"trace" must be followed by the name of a trace subcommand.',
                         "List of trace subcommands:", ""]
    assert trace[3].startswith("trace export -- ")


def test_help_classes_commands_and_errors():
    s = smep()
    out = run(s, "help")
    assert out[0] == "List of classes of commands:"
    assert "breakpoints -- Making program stop at certain points." in out
    assert run(s, "help stepi")[0] == "stepi [N]"
    assert run(s, "help info registers")[0] == "info registers [REG...]"
    assert "stepi -- Execute N machine instructions (default 1) on the current vCPU, then show " \
           "where it stopped." in run(s, "help running")
    assert "The KVM MMU in four words:" in run(s, "help mmu")
    assert run(s, "help nosuch") == ['Undefined command: "nosuch".  Try "help".']
    assert any(line.startswith("Command class: data") for line in run(s, "help all"))


def test_apropos_and_complete():
    s = smep()
    assert "rwatch -- Stop when an instruction reads the memory of EXPR (e.g. `*(u32*)0x200000`)." \
        in run(s, "apropos watch")
    assert run(s, "apropos (")[0].startswith('Invalid regular expression "("')
    assert run(s, "complete info reg") == ["info registers"]
    assert run(s, "complete p $cr4.sm") == ["p $cr4.smap", "p $cr4.smep", "p $cr4.smxe"]
    assert run(s, "complete catch root-") == ["catch root-alloc", "catch root-put", "catch root-zap"]
    run(s, "break flip")
    assert run(s, "complete delete ") == ["delete 1"]


def test_ambiguous_and_undefined_commands_use_gdb_wording():
    s = smep()
    assert run(s, "st")[0].startswith('Ambiguous command "st": ')
    assert run(s, "frobnicate") == ['Undefined command: "frobnicate".  Try "help".']
    assert run(s, "info frob") == ['Undefined info command: "frob".  Try "help info".']
    # gdb's fixed short names win over prefixes.
    for short, full in (("s", "step"), ("si", "stepi"), ("n", "next"), ("ni", "nexti"),
                        ("c", "continue"), ("b", "break"), ("tb", "tbreak"), ("d", "delete"),
                        ("i", "info"), ("p", "print"), ("x", "x"), ("u", "until"),
                        ("bt", "backtrace"), ("q", "quit")):
        assert s.commands.lookup(short).name == full
