"""Expressions as gdb evaluates them: pointer arithmetic in units of the pointed-to type,
character literals, sizeof and &, deep and long expressions (issue 13)."""

import re

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb, needs_gdb_program, oracle_program, values

__all__ = ["oracle_program"]          # the fixture, used by name


def _hex(text: str) -> int:
    return int(re.search(r"0x[0-9a-f]+", text).group(0), 16)


POINTER_EXPRS = ["$rsp", "$rsp + 8", "$sp + 8", "8 + $sp", "$rsp - 8", "(long *)$rsp + 1",
                 "(char *)$rsp + 1", "$pc + 1"]


@needs_gdb_program
def test_pointer_arithmetic_moves_as_far_as_gdb(oracle_program):
    # gdb: $rsp and $sp are `void *` and $pc a code pointer: + 8 is 8 bytes on; a typed
    # pointer moves by its type's size ((long *)$rsp + 1 is 8 bytes on, (char *) 1).
    theirs = values(gdb("starti", *[f"p {e}" for e in POINTER_EXPRS], program=oracle_program))
    assert theirs[1].startswith("(void *) ") and theirs[5].startswith("(long *) ")
    g_sp, g_pc = _hex(theirs[0]), _hex(gdb("starti", "p/x $pc", program=oracle_program)[-1])
    rc, out, err = kvmdbg(*[f"p {e}" for e in POINTER_EXPRS])
    ours = values(out)
    k_sp, k_pc = 0x80000, 0x100000
    assert [_hex(v) - k_sp for v in ours[:7]] == [_hex(v) - g_sp for v in theirs[:7]] == \
        [0, 8, 8, 8, -8, 8, 1]
    assert _hex(ours[7]) - k_pc == _hex(theirs[7]) - g_pc == 1
    assert ours[:5] == ["(void *) 0x80000", "(void *) 0x80008", "(void *) 0x80008",
                        "(void *) 0x80008", "(void *) 0x7fff8"]
    assert ours[5:] == ["(long *) 0x80008", "(char *) 0x80001", "0x100001 <start+1>"]
    assert theirs[7].endswith(" <_start+1>")               # gdb: (void (*)()) 0x401001 <_start+1>


@needs_gdb_program
def test_pointer_differences_and_what_pointers_refuse_are_gdbs(oracle_program):
    exprs = ["((long *)$rsp + 2) - (long *)$rsp", "$rsp - $rsp", "$sp * 2", "-$sp", "*$rsp",
             "(long *)$rsp - $rsp"]
    theirs = gdb("starti", *[f"p {e}" for e in exprs], program=oracle_program)[-7:]
    rc, ours, err = kvmdbg(*[f"p {e}" for e in exprs])
    assert theirs[:2] == ours == ["$1 = 2", "$2 = 0"]
    assert theirs[2] == err[0] == "Argument to arithmetic operation not a number or boolean."
    assert theirs[3] == "Argument to negate operation not a number."
    assert err[1] == "Argument to arithmetic operation not a number or boolean."
    assert theirs[4] == err[2] == "Attempt to dereference a generic pointer."
    assert " ".join(theirs[5:]) == err[3] == ("First argument of `-' is a pointer and second "
                                             "argument is neither an integer nor a pointer of "
                                             "the same type.")


def test_x_on_rsp_plus_8_examines_8_bytes_on():
    # gdb: `x/gx $rsp+8` examines the quadword 8 bytes above the stack pointer.
    rc, out, err = kvmdbg("set *(u64 *)0x80008 = 0x1122", "x/gx $rsp+8", "x/gx (u64 *)$rsp + 1")
    assert out == ["0x80008:\t0x0000000000001122"] * 2, err


@needs_gdb
def test_character_literals_print_as_gdb_prints_them():
    exprs = ["'a'", "'a' + 1", "/x 'a'", "/c 97", "/d 'a'", "'\\n'", "'\\0'", "'\\377'", "(char)65"]
    theirs = gdb(*[f"p{'' if e.startswith('/') else ' '}{e}" for e in exprs])
    rc, ours, err = kvmdbg(*[f"p{'' if e.startswith('/') else ' '}{e}" for e in exprs])
    assert ours == theirs == ["$1 = 97 'a'", "$2 = 98", "$3 = 0x61", "$4 = 97 'a'", "$5 = 97",
                              "$6 = 10 '\\n'", "$7 = 0 '\\000'", "$8 = -1 '\\377'",
                              "$9 = 65 'A'"]


@needs_gdb
def test_deep_and_long_expressions_evaluate_as_in_gdb():
    # gdb evaluates 80 nested parentheses and sums of 1,000 and 10,000 terms (its parser
    # stack holds 10,000 entries).
    exprs = ["(" * 80 + "1" + ")" * 80, "+".join(["1"] * 1000), "+".join(["1"] * 10000),
             "- " * 2000 + "7", "(" * 5000 + "1" + ")" * 5000, "1+(" * 2000 + "1" + ")" * 2000]
    theirs = gdb(*[f"p {e}" for e in exprs])
    rc, ours, err = kvmdbg(*[f"p {e}" for e in exprs])
    assert rc == 0 and err == []
    assert ours == theirs == ["$1 = 1", "$2 = 1000", "$3 = 10000", "$4 = 7", "$5 = 1",
                              "$6 = 2001"]


def test_too_deep_an_expression_has_its_own_message_and_the_session_goes_on():
    # gdb: "A memory exhausted in expression" past 10,000; kvmdbg names its limit, and it
    # is not the user-command recursion message.
    rc, out, err = kvmdbg("p " + "(" * 10001 + "1" + ")" * 10001, "p 2")
    assert err == ["Expression too deeply nested (more than 10,000 parentheses and operators "
                   "waiting for their operands)."]
    assert out == ["$1 = 2"] and rc == 1


@needs_gdb_program
def test_sizeof_of_types_is_gdbs(oracle_program):
    types = ["char", "short", "int", "long", "unsigned char", "unsigned long", "long *",
             "char **"]
    theirs = gdb(*[f"p sizeof({t})" for t in types], 'p sizeof "abc"', "p sizeof(int) * 2",
                 program=oracle_program)
    rc, ours, err = kvmdbg(*[f"p sizeof({t})" for t in types], 'p sizeof "abc"',
                           "p sizeof(int) * 2")
    assert ours == theirs == ["$1 = 1", "$2 = 2", "$3 = 4", "$4 = 8", "$5 = 1", "$6 = 8",
                              "$7 = 8", "$8 = 8", "$9 = 4", "$10 = 8"]


@needs_gdb_program
def test_sizeof_of_registers_and_memory_reads_nothing(oracle_program):
    # gdb: sizeof $eax is 4, sizeof $sp 8, and sizeof *(int *)0 is 4 without reading 0;
    # a symbol without debug information is a 1-byte text variable.
    exprs = ["sizeof $eax", "sizeof $sp", "sizeof(*(int *)0)", "sizeof $rax", "sizeof(flip)"]
    theirs = values(gdb("starti", *[f"p {e}" for e in exprs], program=oracle_program))
    rc, out, err = kvmdbg(*[f"p {e}" for e in exprs], "p sizeof($rax = 5)", "p $rax",
                          "p sizeof(u16)", "p sizeof *(u16 *)0x8000000000")
    assert values(out)[:5] == theirs == ["4", "8", "4", "8", "1"]
    assert values(out)[5:] == ["8", "0", "2", "2"], err       # sizeof assigns nothing


@needs_gdb_program
def test_address_of_a_symbol_and_of_memory(oracle_program):
    # gdb: `p &flip` is `(<text variable, no debug info> *) 0x40101c <flip>`, `&flip + 1`
    # one byte on, `*&flip` the function again, `&$rax` an error.
    theirs = gdb("starti", "p &flip", "p &flip + 1", "p &$rax", "p &*(long *)$sp", "p &1",
                 program=oracle_program)[-5:]
    assert re.fullmatch(r"\$1 = \(<text variable, no debug info> \*\) 0x[0-9a-f]+ <flip>",
                        theirs[0])
    assert theirs[1].endswith(" <flip+1>") and theirs[3].startswith("$3 = (long *) 0x")
    assert theirs[2] == theirs[4] == "Attempt to take address of value not located in memory."
    rc, out, err = kvmdbg("p &flip", "p &flip + 1", "p &$rax", "p &*(long *)$sp", "p &1",
                          "p *&flip", "p/x &*(u32 *)gpa:0x7000")
    assert out == ["$1 = (<text variable, no debug info> *) 0x100033 <flip>",
                   "$2 = (<text variable, no debug info> *) 0x100034 <flip+1>",
                   "$3 = (long *) 0x80000", "$4 = 0x100033 <flip>", "$5 = 0x7000"]
    assert err == ["Attempt to take address of value not located in memory."] * 2


def test_expression_depth_and_user_command_recursion_have_their_own_messages(tmp_path):
    # gdb: a user command that calls itself ends with "Max user call depth exceeded --
    # command aborted."; that message is for user commands only.
    script = tmp_path / "defs.kvmdbg"
    script.write_text("define loop\nloop\nend\ndefine deep\np " + "(" * 10001 + "1" + ")" * 10001
                      + "\nend\ndefine fine\np " + "(" * 9000 + "7" + ")" * 9000 + "\nend\n")
    rc, out, err = kvmdbg("loop", "deep", "fine", options=["-x", str(script)])
    assert err == ["Max user call depth exceeded -- command aborted.",
                   "Expression too deeply nested (more than 10,000 parentheses and operators "
                   "waiting for their operands)."]
    assert out == ["$1 = 7"]
