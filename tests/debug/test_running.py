"""run, starti, stepi, nexti, step, next, continue, until, advance, vcpu, interrupts."""

from tests.debug.util import run, session, smep

CALLS = "mov rcx, 3; start: call f; call f; dec rcx; jnz start; hlt; f: inc rax; ret"


def _core(lines):
    """The stop lines without the model's context (changed registers, mmu summary)."""
    return [ln for ln in lines if not ln.startswith(("changed:", "mmu:"))]


def test_stepi_reports_location_vcpu_step_and_next_instruction():
    s = smep()
    assert _core(run(s, "stepi")) == ["0x100003 <start+3>, vcpu 0, step 1",
                                      "=> 0x100003 <start+3>:\tshr r9, 0x20",
                                      "27\t\tshr\tr9, 32\t\t\t\t# working-set pages"]
    assert _core(run(s, "si 2"))[0] == "0x100009 <start+9>, vcpu 0, step 3"
    assert run(s, "stepi 0") == ['Invalid number "0".  Usage: stepi [N]']
    assert run(s, "stepi x") == ['Invalid number "x".  Usage: stepi [N]']


def test_nexti_steps_over_calls_and_stepi_goes_in():
    s = session(CALLS)
    assert _core(run(s, "nexti 2"))[0] == "0x10000c <start+5>, vcpu 0, step 4"
    assert run(s, "p $rax") == ["$1 = 1"]
    assert _core(run(s, "stepi"))[0] == "0x100017 <f>, vcpu 0, step 5"
    assert _core(run(s, "ni", "ni"))[-2] == "0x100011 <start+10>, vcpu 0, step 7"


def test_step_and_next_say_once_that_they_step_by_instruction():
    s = session(CALLS)
    out = run(s, "step", "next")
    assert out.count("(no source lines; stepping by instruction)") == 1


def test_until_and_advance_stop_at_the_location():
    s = session(CALLS)
    assert _core(run(s, "until 0x100014"))[0] == "0x100014 <start+13>, vcpu 0, step 8"
    assert _core(run(s, "advance f"))[0] == "0x100017 <f>, vcpu 0, step 10"
    assert run(s, "advance") == ["Argument required (a location).  Usage: advance ADDR|FUNC|FILE:LINE|LINE"]
    assert run(s, "until gpa:0x100000") == [
        "Locations are guest-virtual addresses (got gpa:0x100000)."]


def test_breakpoints_stop_until_before_its_location():
    s = session(CALLS)
    run(s, "break f")
    assert _core(run(s, "until 0x100014"))[0] == "Breakpoint 1, 0x100017 <f>, vcpu 0, step 2"


def test_run_and_starti_restart_from_the_boot_state_keeping_breakpoints():
    s = session(CALLS)
    run(s, "break f", "continue", "continue")
    assert run(s, "p $rax") == ["$1 = 1"]
    out = run(s, "run")
    assert out[:4] == ["The program being debugged has been started already.",
                       "Start it from the beginning? (y or n) [answered Y; input not from terminal]",
                       "Starting program: <bytes>", "Breakpoint 1, 0x100017 <f>, vcpu 0, step 2"]
    assert run(s, "p $rax", "p $1") == ["$2 = 0", "$3 = 1"]      # history survives
    s.state.settings.confirm = False
    assert _core(run(s, "starti")) == ["Starting program: <bytes>", "", "Program stopped.",
                                       "0x100000, vcpu 0, step 0", "=> 0x100000:\tmov rcx, 3"]


def test_continue_when_everything_halted_says_so():
    s = session("hlt")
    run(s, "continue")
    assert run(s, "continue") == [
        'The program is not running: every vCPU has halted.  Use "run" to start it again.']


def test_vcpu_selects_what_commands_refer_to():
    s = session(CALLS, vcpus=2)
    assert run(s, "vcpu") == ["[Current vcpu is 0 (of 2), step 0, runnable]"]
    assert _core(run(s, "vcpu 1")) == ["[Switching to vcpu 1]", "0x100000, vcpu 1, step 0",
                                       "=> 0x100000:\tmov rcx, 3"]
    assert _core(run(s, "stepi"))[0] == "0x100007 <start>, vcpu 1, step 1"
    assert run(s, "vcpu 2") == ["Invalid vCPU 2: this VM has 2."]
    assert run(s, "vcpu x") == ['Invalid vCPU number "x".  Usage: vcpu [N]']
    out = run(s, "info vcpus")
    assert out[0].split() == ["Id", "Thread", "State", "Step", "Cycles", "Where"]
    assert out[2].startswith("* 1   2       runnable              1")


def test_ctrl_c_stops_a_continue_between_instructions():
    s = smep(arg=10_000_000)
    seen = []

    def on_event(ev):                    # the "user" presses Ctrl-C after some exits
        seen.append(ev)
        if len(seen) == 200:
            s.interrupt_requested = True

    s.vm.bus.subscribe(on_event)
    out = run(s, "continue")
    assert out[1].startswith("Interrupted at step ")
    assert out[2].startswith("=> ")
    assert not s.cpu.halted and s.cpu.steps < 1_000_000


def test_run_stops_at_a_breakpoint_on_the_first_instruction_and_rewatches():
    s = session(CALLS)
    s.state.settings.confirm = False
    run(s, "break *0x100000", "watch $rax")
    assert _core(run(s, "run"))[1] == "Breakpoint 1, 0x100000, vcpu 0, step 0"
    out = run(s, "continue")
    assert "Old value = 0" in out and "New value = 1" in out
    run(s, "continue", "continue")                     # rax is 3 now
    out = run(s, "run")
    assert out[1] == "Breakpoint 1, 0x100000, vcpu 0, step 0"
    out = run(s, "continue")
    assert "Old value = 0" in out and "New value = 1" in out    # not "Old value = 3"
