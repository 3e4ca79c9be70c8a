"""The expression language: print, value history, registers, CR fields, memory, casts."""

import pytest

from tests.debug.util import run, session, smep


@pytest.mark.parametrize("expr, shown", [
    ("1 + 2 * 3", "7"), ("(1 + 2) * 3", "9"), ("7 / 2", "3"), ("-7 / 2", "-3"), ("-7 % 3", "-1"),
    ("1 << 4 | 1", "17"), ("0xff & ~0xf", "240"), ("5 ^ 3", "6"), ("!0 + !5", "1"),
    ("3 > 2 && 2 > 3", "0"), ("3 > 2 || 1 / 0", "1"), ("0x10 == 16", "1"), ("2 <= 1", "0"),
    ("'A'", "65 'A'"), ("'A' + 1", "66"), ("010", "8"), ("0b101", "5"), ("1_000", "1000"), ("-1", "-1"),
    ("0xffffffffffffffff", "18446744073709551615"), ("0xffffffffffffffff + 1", "0"),
    ("(u8)0x1ff", "255"), ("(s8)0xff", "-1"), ("(char)65", "65 'A'"), ('"hi"', '"hi"'),
    ("flip", "0x100033 <flip>"), ("touch - flip", "15"),
])
def test_arithmetic_and_literals(expr, shown):
    assert run(smep(), f"print {expr}") == [f"$1 = {shown}"]


@pytest.mark.parametrize("fmt, expr, shown", [
    ("x", "255", "0xff"), ("x", "-1", "0xffffffffffffffff"), ("d", "0xffffffffffffffff", "-1"),
    ("u", "-1", "18446744073709551615"), ("o", "8", "010"), ("t", "5", "101"),
    ("c", "65", "65 'A'"), ("a", "0x100035", "0x100035 <flip+2>"), ("z", "(u32)5", "0x00000005"),
    ("x", "$cr4", "0x620"), ("d", "$eflags", "2"),
])
def test_print_formats(fmt, expr, shown):
    assert run(smep(), f"print/{fmt} {expr}") == [f"$1 = {shown}"]


def test_registers_sub_registers_and_natural_formats():
    s = smep(arg=0x1234)
    assert run(s, "p $rdx", "p $dl", "p $dh", "p $dx", "p/x $edx") == [
        "$1 = 4660", "$2 = 52", "$3 = 18", "$4 = 4660", "$5 = 0x1234"]
    assert run(s, "p $rip", "p $pc", "p $rsp", "p $eflags", "p $cr0", "p $efer") == [
        "$6 = 0x100000 <start>", "$7 = 0x100000 <start>", "$8 = (void *) 0x80000", "$9 = [ ]",
        "$10 = [ PG WP NE ET MP PE ]", "$11 = [ NXE LMA LME ]"]


def test_control_register_bit_fields():
    s = smep()
    assert run(s, "p $cr4.pae", "p $cr4.smep", "p $cr0.wp", "p $efer.nxe", "p $efer.nx",
               "p $cr3.pdbr", "p $eflags.iopl") == ["$1 = 1", "$2 = 0", "$3 = 1", "$4 = 1", "$5 = 1",
                                                    "$6 = 1", "$7 = 0"]
    assert run(s, "p $cr4.bogus")[0].startswith("There is no member named bogus in $cr4 (try: ")
    assert run(s, "p $rax.smep") == [
        "Attempt to extract a component of a value that is not a structure."]


def test_value_history_and_convenience_variables():
    s = smep()
    run(s, "p 10", "p 20", "p 30")
    assert run(s, "p $", "p $$", "p $$3", "p $1 + $2") == ["$4 = 30", "$5 = 30", "$6 = 20", "$7 = 30"]
    assert run(s, "p $99") == ["History has not yet reached $99."]
    assert run(s, "set $n = 5", "p $n * 2", "p $unset") == ["$8 = 10", "$9 = void"]
    assert run(s, "p $unset + 1") == [
        "Argument to arithmetic operation not a number or boolean (void)."]
    assert run(s, "p $_step", "stepi 3", "p $_step")[-1] == "$11 = 3"


def test_memory_dereference_in_every_space():
    s = smep()
    run(s, "set *(u64*)gpa:0x7000 = 0x1122334455667788")
    assert run(s, "p/x *(u64*)gpa:0x7000", "p/x *(u32*)0x7004", "p/x {u16}0x7000",
               "p/x *(u8*)(gpa:0x7000 + 7)") == ["$1 = 0x1122334455667788", "$2 = 0x11223344",
                                                 "$3 = 0x7788", "$4 = 0x11"]
    hpa = int(next(ln for ln in run(s, "translate 0x7000") if ln.startswith("hpa ")).split()[1], 16)
    assert run(s, f"p/x *(u64*)hpa:{hpa:#x}") == ["$5 = 0x1122334455667788"]
    assert run(s, "p *(u64*)0x8000000000") == [
        "Cannot access memory at address 0x8000000000 (guest walk: PML4E[1] not present)"]
    assert run(s, "p *(u64*)0xffff000000000000") == [
        "Cannot access memory at address 0xffff000000000000 (guest walk: non-canonical address)"]
    assert run(s, "p *(u64*)hpa:0x5000")[0].startswith("Cannot access memory at address hpa:0x5000")


@pytest.mark.parametrize("expr, error", [
    ("1 +", "A syntax error in expression, near `'."),
    ("(1", "A syntax error in expression, near `'."),
    ("1 2", "A syntax error in expression, near `2'."),
    ("nosuch", 'No symbol "nosuch" in current context.'),
    ("1 / 0", "Division by zero"),
    ("0x1g", 'Invalid number "0x1g".'),
    ("@", "Invalid character '@' in expression."),
    ("$_event.root", "$_event is void: no catchpoint has stopped the program yet."),
    ("1 = 2", "Left operand of assignment is not an lvalue."),
    ('"a" + 1', "Argument to arithmetic operation not a number or boolean (a string)."),
    ("", "Argument required (expression to compute)."),
])
def test_bad_expressions_are_one_line(expr, error):
    s = smep()
    s.history.values.append(s.history.lookup(""))     # so an empty `print` is not this test
    out = run(s, f"print {expr}") if expr else run(s, "output")
    assert out == [error] or out == [error + "  Usage: output[/FMT] EXPR"]


def test_print_format_errors_name_the_usage():
    assert run(smep(), "p/q 1") == ['Undefined output format "q".  Usage: print[/FMT] [EXPR]']
    assert run(smep(), "p/2x 1") == [
        'Item count other than 1 is meaningless in "print" command.  Usage: print[/FMT] [EXPR]']


def test_assignment_to_registers_memory_and_through_the_cr_path():
    s = smep()
    assert run(s, "set $rax = 0x1234", "set $ah = 0", "p/x $rax") == ["$1 = 0x34"]
    assert run(s, "set var $rbx = $rax + 1", "p $rbx") == ["$2 = 53"]
    assert run(s, "print $rcx = 7", "p $ecx") == ["$3 = 7", "$4 = 7"]
    exits = s.vm.stats["exits"]
    assert run(s, "set $cr4.smep = 1", "p/x $cr4") == ["$5 = 0x100620"]
    assert s.vm.stats["exits"] == exits + 1          # a CR access exit, as a guest MOV makes
    assert run(s, "set $cr4.pae = 0") == [
        "Cannot set $cr4 to 0x100600: the CPU refuses it (#GP(0x0))."]
    assert run(s, "p/x $cr4") == ["$6 = 0x100620"]
    assert run(s, "set $foo") == ["Expected an assignment (VARIABLE = EXPR).  "
                                  "Usage: set VARIABLE = EXPR | set SETTING VALUE"]
    assert run(s, "set frobnicate") == ['Undefined set command: "frobnicate".  Try "help set".']
    assert run(s, "set nosuch = 1") == ['No symbol "nosuch" in current context.']
    assert run(s, "set $_step = 1") == ["$_step is read-only."]


def test_strings_and_string_comparisons():
    s = session("mov rax, 1; hlt")
    assert run(s, 'p "a\\tb"', 'p "x" == "x"', 'p "x" != "x"') == ['$1 = "a\\tb"', "$2 = 1", "$3 = 0"]
