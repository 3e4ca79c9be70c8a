"""x, xp, print history, display, disassemble, info registers/cr/symbol, translate, bt."""

import pytest

from tests.debug.util import run, session, smep


@pytest.mark.parametrize("cmd, shown", [
    ("x/4xb 0x100000", "0x100000 <start>:\t0x49\t0x89\t0xd1\t0x49"),
    ("x/2dh 0x100000", "0x100000 <start>:\t-30391\t18897"),
    ("x/xw start", "0x100000 <start>:\t0x49d18949"),
    ("x/3ob 0x100000", "0x100000 <start>:\t0111\t0211\t0321"),
    ("x/2tb 0x100000", "0x100000 <start>:\t01001001\t10001001"),
    ("x/2c message", "0x10006f <message>:\t115 's'\t109 'm'"),
    ("x/s message", '0x10006f <message>:\t"smep_flip: done\\n"'),
    ("x/zh 0x100000", "0x100000 <start>:\t0x8949"),
    ("x/2xg gpa:0x1000", "gpa:0x1000:\t0x0000000000002003\t0x0000000000000000"),
    ("xp/2xg 0x1000", "gpa:0x1000:\t0x0000000000002003\t0x0000000000000000"),
    ("x/a $rsp", "0x80000:\t0x0"),
])
def test_x_formats_and_sizes(cmd, shown):
    assert run(smep(), cmd) == [shown]


def test_x_rows_follow_gdb_units_per_line_and_defaults_stick():
    s = smep()
    out = run(s, "x/10xb 0x100000")
    assert len(out) == 2 and out[1].startswith("0x100008 <start+8>:\t")
    assert run(s, "x") == ["0x10000a <start+10>:\t0xb9"]          # same format, next address
    assert run(s, "x/2") == ["0x10000b <start+11>:\t0x10\t0x00"]
    assert len(run(s, "x/5xw 0x100000")) == 2 and len(run(s, "x/3xg 0x100000")) == 2


def test_x_instructions_mark_rip_and_remember_last_address():
    s = smep()
    assert run(s, "x/2i $pc") == ["=> 0x100000 <start>:\tmov r9, rdx",
                                  "   0x100003 <start+3>:\tshr r9, 0x20"]
    assert run(s, "x/i") == ["   0x100007 <start+7>:\tjne 0x10000f <start+15>"]
    assert run(s, "x/xg 0x100000") == ["0x100000 <start>:\t0x7520e9c149d18949"]
    assert run(s, "p $_", "p/x $__") == ["$1 = (s64 *) 0x100000 <start>", "$2 = 0x7520e9c149d18949"]


def test_x_errors():
    s = smep()
    assert run(s, "x") == ["Argument required (starting display address).  Usage: x[/NFU] [ADDR]"]
    assert run(s, "x/q 0") == ['Undefined output format "q".  Usage: x[/NFU] [ADDR]']
    assert run(s, "x/4xb 0x8000000000") == [
        "Cannot access memory at address 0x8000000000 (guest walk: PML4E[1] not present)"]
    assert run(s, "x/2xw hpa:0x1") == ["Cannot access memory at address hpa:0x1 (no host page at "
                                       "pfn 0x0)"]
    assert run(s, 'x "str"') == ["Value can't be converted to integer.  Usage: x[/NFU] [ADDR]"]


def test_display_shows_now_and_after_every_stop():
    s = smep()
    assert run(s, "display $rbx", "display/x $rdx", "display/i $pc") == [
        "1: $rbx = 0", "2: /x $rdx = 0x0", "3: x/i $pc", "=> 0x100000 <start>:\tmov r9, rdx"]
    out = run(s, "stepi 8")
    assert out[-4:] == ["1: $rbx = 0", "2: /x $rdx = 0x186a0", "3: x/i $pc",
                        "=> 0x10001b <start+27>:\tmov rbx, rdx"]
    assert run(s, "info display") == ["Auto-display expressions now in effect:", "Num Enb Expression",
                                      "1:   y  $rbx", "2:   y  /x $rdx", "3:   y  /i $pc"]
    run(s, "undisplay 1-2", "disable display 3")
    assert run(s, "info display")[2:] == ["3:   n  /i $pc"]
    assert run(s, "undisplay 9") == ["No display number 9."]
    assert run(s, "display $nosuch + 1") == [
        "Argument to arithmetic operation not a number or boolean (void)."]


def test_disassemble_function_range_raw_and_markers():
    s = smep()
    run(s, "break *0x100039")
    assert run(s, "disassemble flip") == [
        "Dump of assembler code for function flip:",
        "   0x100033 <+0>:\txor rax, 0x100000",
        "b  0x100039 <+6>:\tmov cr4, rax",
        "   0x10003c <+9>:\tmov rsi, r8",
        "   0x10003f <+12>:\tmov ecx, r9d",
        "End of assembler dump."]
    assert run(s, "disassemble /r 0x100000,+9") == [
        "Dump of assembler code from 0x100000 to 0x100009:",
        "=> 0x100000 <start>:\t49 89 d1\tmov r9, rdx",
        "   0x100003 <start+3>:\t49 c1 e9 20\tshr r9, 0x20",
        "   0x100007 <start+7>:\t75 06\tjne 0x10000f <start+15>",
        "End of assembler dump."]
    assert run(s, "disassemble 5,1") == ["Invalid range: the end is not after the start."]
    assert run(s, "disassemble /q") == [
        'Invalid disassembly modifier "q".  Usage: disassemble[/r] [ADDR[,+LEN]|START,END]']


def test_info_registers_marks_changes_since_the_previous_stop():
    s = smep()
    assert run(s, "info registers rip") == ["rip            0x100000           0x100000 <start>"]
    run(s, "stepi 2")
    assert run(s, "info registers rip eflags rbx") == [
        "rip           *0x100007           0x100007 <start+7>",
        "eflags        *0x46               [ PF ZF ]",
        "rbx            0x0                0"]
    run(s, "stepi")
    assert run(s, "i r eflags") == ["eflags         0x46               [ PF ZF ]"]
    assert run(s, "info registers nosuch") == ["Invalid register `nosuch'"]
    assert len(run(s, "info registers")) == 33


def test_info_cr_marks_role_bits():
    out = run(smep(), "info cr")
    assert out[0] == "cr0   0x80010033 [ PG WP NE ET MP PE ]"
    assert "  16 WP         1  role  write protect (supervisor writes honour R/W)" in out
    assert "  20 SMEP       0  role  supervisor-mode execution prevention" in out
    assert out[-1].startswith("role: an input of kvm_calc_cpu_role")


def test_translate_walks_the_guest_tables():
    out = run(smep(), "translate 0x100000")
    assert out[:6] == [
        "gva 0x100000: guest walk from cr3 0x1000",
        "  PML4E[0]    at gpa 0x1000 = 0x0000000000002003  P RW",
        "  PDPTE[0]    at gpa 0x2000 = 0x0000000000003003  P RW",
        "  PDE[0]      at gpa 0x3000 = 0x0000000000004003  P RW",
        "  PTE[256]    at gpa 0x4800 = 0x0000000000100003  P RW",
        "gpa 0x100000 (4K page, gfn 0x100)"]
    bad = run(smep(), "translate 0x8000000000")
    assert bad[-1] == "  no translation: PML4E[1] not present" or "not present" in bad[-1]
    assert run(smep(), "translate") == [
        "Argument required (a guest-virtual address).  Usage: translate GVA"]


def test_info_symbol_and_backtrace():
    s = session("mov rcx, 1; call f; hlt; f: nop; ret")
    assert run(s, "info symbol f + 1", "info symbol 0x5000000") == ["f + 1", "No symbol matches 0x5000000."]
    run(s, "break f", "continue")
    assert run(s, "bt") == ["#0  0x10000d <f>", "#1  0x10000c"]
