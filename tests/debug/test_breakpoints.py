"""break, tbreak, delete, disable, enable, condition, ignore, commands, info breakpoints."""

from tests.debug.util import run, session, smep

LOOP = "start: mov rax, 1; loop: inc rax; cmp rax, 5; jne loop; done: hlt"


def test_break_on_symbol_stops_with_gdb_wording():
    s = smep()
    assert run(s, "break flip") == ["Breakpoint 1 at 0x100033: file smep_flip.S, line 42."]
    out = run(s, "continue")
    assert out[:4] == ["Continuing.", "Breakpoint 1, 0x100033 <flip>, vcpu 0, step 14",
                       "=> 0x100033 <flip>:\txor rax, 0x100000",
                       "42\t\txor\trax, CR4_SMEP"]


def test_break_forms_address_star_expression_and_current_instruction():
    s = smep()
    assert run(s, "break *0x100039") == ["Breakpoint 1 at 0x100039: file smep_flip.S, line 43."]
    assert run(s, "b 0x10003c") == ["Breakpoint 2 at 0x10003c: file smep_flip.S, line 45."]
    assert run(s, "br *flip + 0xf") == ["Breakpoint 3 at 0x100042: file smep_flip.S, line 48."]
    assert run(s, "break") == ["Breakpoint 4 at 0x100000: file smep_flip.S, line 26."]
    assert run(s, "tbreak touch") == ["Note: breakpoint 3 also set at pc 0x100042.",
                                      "Temporary breakpoint 5 at 0x100042: file smep_flip.S, line 48."]


def test_info_breakpoints_columns_and_sub_lines():
    s = session(LOOP)
    run(s, "break loop if $rax == 3", "tbreak done", "ignore 1 0", "commands 1", "silent",
        "print $rax", "end")
    run(s, "continue")
    assert run(s, "info breakpoints") == [
        "Num     Type           Disp Enb Address            What",
        "1       breakpoint     keep y   0x0000000000100007 <loop>",
        "\tstop only if $rax == 3",
        "\tbreakpoint already hit 1 time",
        "        silent",
        "        print $rax",
        "2       breakpoint     del  y   0x0000000000100010 <done>",
    ]


def test_condition_ignore_and_hit_counts():
    s = session(LOOP)
    run(s, "break loop")
    assert run(s, "ignore 1 2") == ["Will ignore next 2 crossings of breakpoint 1."]
    out = run(s, "continue", "print $rax")
    assert out[1].startswith("Breakpoint 1, 0x100007 <loop>") and out[-1] == "$1 = 3"
    assert run(s, "condition 1 $rax == 4", "continue", "print $rax")[-1] == "$2 = 4"
    assert run(s, "condition 1") == ["Breakpoint 1 now unconditional."]
    assert run(s, "ignore 1 1") == ["Will ignore next crossing of breakpoint 1."]
    assert run(s, "ignore 1 0") == ["Will stop next time breakpoint 1 is reached."]
    assert "breakpoint already hit 4 times" in "\n".join(run(s, "info breakpoints"))


def test_temporary_breakpoint_is_deleted_after_its_stop():
    s = session(LOOP)
    assert run(s, "tbreak loop") == ["Temporary breakpoint 1 at 0x100007 <loop>"]
    assert run(s, "continue")[1] == "Temporary breakpoint 1, 0x100007 <loop>, vcpu 0, step 1"
    assert run(s, "info breakpoints") == ["No breakpoints or watchpoints."]


def test_delete_ranges_disable_and_enable_once_count_delete():
    s = session(LOOP)
    for _ in range(5):
        run(s, "break loop")
    run(s, "delete 2-3 5")
    assert [line.split()[0] for line in run(s, "info breakpoints")[1:]] == ["1", "4"]
    run(s, "disable")
    assert all(line.split()[3] == "n" for line in run(s, "info breakpoints")[1:])
    run(s, "enable once 1")
    assert run(s, "continue")[1].startswith("Breakpoint 1, ")
    assert run(s, "info breakpoints")[1].split()[2:4] == ["keep", "n"]     # once: disabled again
    run(s, "enable count 2 4")
    assert [ln for ln in run(s, "continue", "continue") if ln.startswith("Breakpoint")] == [
        "Breakpoint 4, 0x100007 <loop>, vcpu 0, step 4", "Breakpoint 4, 0x100007 <loop>, vcpu 0, step 7"]
    rows = {line.split()[0]: line.split() for line in run(s, "info breakpoints")[1:]
            if line[0].isdigit()}
    assert rows["4"][3] == "n"                                # count 2: disabled after 2 stops
    run(s, "enable delete 1")
    assert run(s, "continue")[1].startswith("Temporary breakpoint 1, ")
    assert [line.split()[0] for line in run(s, "info breakpoints")[1:] if line[0].isdigit()] == ["4"]


def test_continue_n_sets_the_ignore_count_of_the_breakpoint_stopped_at():
    s = session(LOOP)
    run(s, "break loop", "continue")
    assert run(s, "print $rax") == ["$1 = 1"]
    out = run(s, "continue 2", "print $rax")
    assert out[0] == "Will ignore next 1 crossings of breakpoint 1.  Continuing."
    assert out[-1] == "$2 = 3"


def test_commands_silent_and_continue_run_after_each_stop():
    s = session(LOOP)
    run(s, "break loop", "commands", "silent", "printf \"rax=%d\\n\", $rax", "continue", "end")
    out = run(s, "continue")
    assert out == ["Continuing.", "rax=1", "rax=2", "rax=3", "rax=4",
                   "[all vCPUs halted] 0x100011 <done+1>, vcpu 0, step 14"]


def test_commands_without_silent_print_the_stop_first():
    s = session(LOOP)
    run(s, "break loop if $rax == 2", "commands", "print $rax * 10", "end")
    out = run(s, "continue")
    assert out[1].startswith("Breakpoint 1, ") and out[-1] == "$1 = 20"


def test_bad_arguments_are_one_line_with_usage():
    s = session(LOOP)
    assert run(s, "delete x") == ["Bad breakpoint number 'x'.  Usage: delete [N|M-N]..."]
    assert run(s, "delete 7") == ["No breakpoint number 7."]
    assert run(s, "break nowhere") == ['Function "nowhere" not defined.']      # gdb 13's words
    assert run(s, "break gpa:0x1000")[0].startswith("Breakpoints are on guest-virtual addresses")
    assert run(s, "break loop if") == [
        'Argument required (boolean expression after "if").  Usage: break [[*]ADDR|SYMBOL|FILE:LINE|LINE] [if EXPR]']
    assert run(s, "break loop if $rax ==") == ["A syntax error in expression, near `'."]
    assert run(s, "ignore 1") == ["Argument required (a breakpoint number and a count).  "
                                  "Usage: ignore N COUNT"]
    assert run(s, "condition") == ["Argument required (breakpoint number).  Usage: condition N [EXPR]"]
    assert run(s, "commands") == ["No breakpoints specified."]
    assert run(s, "info breakpoints") == ["No breakpoints or watchpoints."]


def test_condition_that_cannot_be_evaluated_stops_and_says_why():
    s = session(LOOP)
    run(s, "break loop if *(u64*)0x8000000000 == 1")
    out = run(s, "continue")
    assert out[1].startswith("Error in testing condition for breakpoint 1: Cannot access memory "
                             "at address 0x8000000000")
    assert out[2].startswith("Breakpoint 1, ")


def test_clear_deletes_breakpoints_at_an_address():
    s = session(LOOP)
    run(s, "break loop", "break loop", "break start")
    assert run(s, "clear loop") == ["Deleted breakpoints 1 2 "]
    assert run(s, "clear loop") == ["No breakpoint at loop."]


def test_delete_all_asks_then_answers_yes_without_a_terminal():
    s = session(LOOP)
    run(s, "break loop")
    assert run(s, "delete") == ["Delete all breakpoints? (y or n) [answered Y; input not from terminal]"]
    assert run(s, "info breakpoints") == ["No breakpoints or watchpoints."]
    s.state.settings.confirm = False
    run(s, "break loop")
    assert run(s, "delete") == []


# Each pass stores to a page the guest has not touched yet: under EPT the store is an EPT
# violation, an exit before the instruction retires, and the instruction runs again after
# the entry.
TOUCH = "start: mov rsi, 0x400000; mov rcx, 6; touch: mov [rsi], rcx; add rsi, 4096; dec rcx; jnz touch; hlt"


def test_continue_retires_a_breakpoint_instruction_that_exits_before_retiring():
    s = session(TOUCH, kvm="v6.12")
    run(s, "break touch")
    seen = []
    for _ in range(4):
        out = run(s, "continue")
        assert out[1].startswith("Breakpoint 1, 0x10000e <touch>"), out
        seen.append(run(s, "print $rcx")[-1])
    # one stop per pass (the same crossing is never reported twice), each after the exit
    assert seen == ["$1 = 6", "$2 = 5", "$3 = 4", "$4 = 3"]
    assert s.vm.exit_reasons.get(48, 0) >= 4                 # EXIT_REASON_EPT_VIOLATION
    assert run(s, "ignore 1 1") == ["Will ignore next crossing of breakpoint 1."]
    run(s, "continue")
    assert run(s, "print $rcx")[-1] == "$5 = 1"
    assert "breakpoint already hit 6 times" in "\n".join(run(s, "info breakpoints"))
