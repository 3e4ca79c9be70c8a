"""catch/tcatch: kinds over the event bus, stops after the instruction, $_event."""

import pytest

from kvmdbg.debug.engine import catchpoints
from kvmdbg.events import Event
from tests.debug.util import run, session

MARKERS = "mov dx, 0x512; mov eax, 1; out dx, eax; mov eax, 2; out dx, eax; hlt"


def test_catch_marker_stops_after_the_out_and_sets_event():
    s = session(MARKERS)
    assert run(s, "catch marker") == ["Catchpoint 1 (kvm event 'marker')"]
    out = run(s, "continue")
    assert out[:3] == ["Continuing.", "Catchpoint 1 (marker 0x1), vcpu 0, step 3",
                       "=> 0x10000a:\tmov eax, 2"]
    assert run(s, "p $_event.value", "p $_event.name") == ["$1 = 1", '$2 = "kvmdbg:marker"']
    assert run(s, "continue")[1] == "Catchpoint 1 (marker 0x2), vcpu 0, step 5"
    assert run(s, "info breakpoints")[2] == "\tcatchpoint already hit 2 times"


def test_catch_condition_sees_the_event_and_tcatch_goes_away():
    s = session(MARKERS)
    assert run(s, "tcatch marker if $_event.value == 2") == [
        "Temporary catchpoint 1 (kvm event 'marker')"]
    assert run(s, "continue")[1] == "Temporary catchpoint 1 (marker 0x2), vcpu 0, step 5"
    assert run(s, "info breakpoints") == ["No breakpoints or watchpoints."]


def test_catch_with_an_argument_and_disabled_catchpoints_do_not_listen():
    s = session(MARKERS)
    assert run(s, "catch vmexit io_instruction") == [
        "Catchpoint 1 (kvm event 'vmexit IO_INSTRUCTION')"]
    assert run(s, "continue")[1] == "Catchpoint 1 (vmexit IO_INSTRUCTION rip 0x10000a), vcpu 0, step 3"
    run(s, "disable 1")
    assert s.breakpoints._on_event not in s.vm.bus._listeners
    assert run(s, "continue")[-1].startswith("[all vCPUs halted]")


def test_catch_cr_write_on_the_smep_flip():
    from tests.debug.util import smep
    s = smep(arg=2)
    assert run(s, "catch cr-write cr4") == ["Catchpoint 1 (kvm event 'cr-write cr4')"]
    out = run(s, "continue", "p/x $_event.val", "p $cr4.smep")
    assert out[1] == "Catchpoint 1 (cr-write cr4 = 0x100620), vcpu 0, step 15"
    assert out[-2:] == ["$1 = 0x100620", "$2 = 1"]


@pytest.mark.parametrize("line, error", [
    ("catch nosuch", 'Unknown catch kind "nosuch" (kinds: ' + ", ".join(catchpoints.KINDS) + ")."),
    ("catch root", 'Ambiguous catch kind "root": root-alloc, root-zap, root-put.'),
    ("catch marker 3", 'catch marker takes no argument (got "3").'),
    ("catch tlb-flush sideways", 'Bad argument "sideways" for catch tlb-flush: expected one of '
                                 'local, remote.'),
    ("catch vmexit FROB", "Unknown exit reason \"FROB\" (known: " +
     ", ".join(sorted(catchpoints.EXIT_NUMBERS)) + ", or a number)."),
    ("catch marker if", 'Argument required (boolean expression after "if").  '
                        'Usage: catch KIND [ARG] [if EXPR]'),
])
def test_bad_catch_lines(line, error):
    assert run(session(MARKERS), line) == [error]


def test_catch_alone_lists_the_kinds():
    out = run(session(MARKERS), "catch")
    assert out[0] == "catch KIND [ARG] [if EXPR]"
    assert len(out) == 2 + len(catchpoints.KINDS)


def _ev(name, **fields):
    return Event(1, name, 0, 0, fields)


@pytest.mark.parametrize("kind, arg, event, fires", [
    ("root-alloc", "", _ev("kvm_mmu_get_page", created=True, root_count=1), True),
    ("root-alloc", "", _ev("kvm_mmu_get_page", created=True, root_count=0), False),
    ("spte-zap", "", _ev("kvm_tdp_mmu_spte_changed", old_spte=0x800 | 7, new_spte=0), True),
    ("spte-zap", "", _ev("kvm_tdp_mmu_spte_changed", old_spte=0, new_spte=0x807), False),
    ("vmexit", "CR_ACCESS", _ev("kvm_exit", exit_reason="CR_ACCESS"), True),
    ("vmexit", "CR_ACCESS", _ev("kvm_exit", exit_reason=48), False),
    ("ept-violation", "", _ev("kvm_exit", exit_reason=48), True),
    ("cr-write", "cr4", _ev("kvm_cr", rw=1, cr=4, val=0), True),
    ("cr-write", "cr0", _ev("kvm_cr", rw=1, cr=4, val=0), False),
    ("cr-write", "", _ev("kvm_cr", rw=0, cr=4, val=0), False),
    ("tlb-flush", "remote", _ev("kvmdbg:remote_tlb_flush"), True),
    ("tlb-flush", "local", _ev("kvmdbg:remote_tlb_flush"), False),
    ("page-fault", "guest", _ev("kvm_inj_exception", exception=14), True),
    ("page-fault", "ept", _ev("kvm_inj_exception", exception=14), False),
])
def test_kind_predicates(kind, arg, event, fires):
    k = catchpoints.KINDS[kind]
    assert (event.name in k.events and k.matches(event, arg)) == fires


def test_every_kind_of_design_section_7_exists_with_a_summary():
    design = ("root-alloc root-zap root-put spte-set spte-zap zap-all mmu-reset tlb-flush "
              "ept-violation page-fault vmexit cr-write memslot marker").split()
    assert list(catchpoints.KINDS) == design
    assert all(k.summary and k.events for k in catchpoints.KINDS.values())


def test_python_api_run_honours_stop_points_set_by_commands():
    from kvmdbg import Session
    from tests.debug.util import SMEP
    s = Session.load(SMEP, arg=2)
    s.execute("catch cr-write cr4")
    stop = s.run(max_steps=10_000)
    assert (stop.reason, stop.step) == ("catchpoint", 15)
    assert s.last_event.fields["cr"] == 4
