"""Completion: the pure suggest() and the prompt_toolkit completer over it."""

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from kvmdbg.debug.present.suggest import suggest
from kvmdbg.repl.completer import KvmdbgCompleter
from tests.debug.util import smep


def texts(s, line):
    return [c.text for c in suggest(s, line)]


def test_commands_with_their_usage_as_description():
    s = smep()
    got = {c.text: c.meta for c in suggest(s, "ste")}
    assert got == {"step": "step [N]", "stepi": "stepi [N]"}
    assert texts(s, "") and all(c.kind == "command" for c in suggest(s, ""))


def test_info_set_show_subcommands():
    s = smep()
    assert texts(s, "info reg") == ["registers"]
    assert texts(s, "info re") == ["record", "registers"]     # as gdb: both exist
    assert "breakpoints" in texts(s, "i ")
    assert texts(s, "set log") == ["logging"]
    assert texts(s, "show ver") == ["version"]


def test_registers_fields_and_convenience_variables_after_dollar():
    s = smep()
    assert texts(s, "p $ra") == ["$rax"]
    assert "$rip" in texts(s, "x/4i $r") and "$pc" in texts(s, "p $")
    assert texts(s, "set $cr4.sm") == ["$cr4.smap", "$cr4.smep", "$cr4.smxe"]
    s.execute("set $mine = 1")
    assert "$mine" in texts(s, "p $mi")
    assert texts(s, "p $_st") == ["$_step"]


def test_breakpoint_numbers_catch_kinds_and_their_arguments():
    s = smep()
    s.execute("break flip")
    s.execute("watch $rax")
    got = {c.text: c.meta for c in suggest(s, "delete ")}
    assert got == {"1": "breakpoint smep_flip.S:42", "2": "watchpoint $rax"}
    assert texts(s, "catch root") == ["root-alloc", "root-put", "root-zap"]
    assert texts(s, "tcatch tlb-flush ") == ["local", "remote"]
    assert "CR_ACCESS" in texts(s, "catch vmexit C")


def test_symbols_spaces_files_and_help_topics():
    s = smep()
    assert texts(s, "break fl") == ["flip"]
    assert texts(s, "x/4gx gp") == ["gpa:"]
    assert texts(s, "source tests/rep") == ["tests/repl/"]
    assert "running" in texts(s, "help ru") and "run" in texts(s, "help ru")
    assert texts(s, "vcpu ") == ["0"]


def test_profiles_knobs_and_costs_from_the_kvm_model():
    s = smep()
    assert "v6.1" in texts(s, "set profile v6") and "v6.12" in texts(s, "set profile v6")
    assert "tdp_mmu" in texts(s, "set kvm tdp")
    assert texts(s, "set kvm tdp_mmu ") == ["off", "on"]
    assert "ept_violation" in texts(s, "set cost ept")
    assert "variable" in texts(s, "set ")


def test_a_command_can_bring_its_own_completer():
    s = smep()
    s.commands.sub("set").add("knob", lambda s, arg: None, doc="set knob NAME\n\n    Test.",
                              complete=lambda s, words, word: [("alpha", "a knob"), ("beta", "")])
    assert {c.text: c.meta for c in suggest(s, "set knob a")} == {"alpha": "a knob"}


def test_prompt_toolkit_completer_replaces_the_last_word_with_meta():
    s = smep()
    comp = KvmdbgCompleter(s)
    got = list(comp.get_completions(Document("info regi"), CompleteEvent(completion_requested=True)))
    assert [(c.text, c.start_position, c.display_meta_text) for c in got] == [
        ("registers", -4, "info registers [REG...]")]
    got = list(comp.get_completions(Document("p $cr0.w"), CompleteEvent(completion_requested=True)))
    assert [c.text for c in got] == ["$cr0.wp"] and got[0].start_position == -len("$cr0.w")
