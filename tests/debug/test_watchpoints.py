"""watch / rwatch / awatch on memory (gva, gpa) and registers."""

from tests.debug.util import run, session, smep

MEM = ("mov rax, 0x200000; mov qword ptr [rax], 5; mov rbx, [rax]; mov qword ptr [rax], 5; "
       "add qword ptr [rax], 1; hlt")


def _stops(lines):
    return [ln for ln in lines if ln.startswith(("Watchpoint", "Read", "Access", "Old", "New",
                                                 "Value", "0x"))]


def test_watch_memory_reports_old_and_new_values():
    s = session(MEM)
    assert run(s, "watch *(u64*)0x200000") == ["Watchpoint 1: *(u64*)0x200000"]
    out = run(s, "continue")
    assert out[:7] == ["Continuing.", "", "Watchpoint 1: *(u64*)0x200000", "", "Old value = 0",
                       "New value = 5", "0x10000e, vcpu 0, step 2"]
    assert _stops(run(s, "continue")) == ["Watchpoint 1: *(u64*)0x200000", "Old value = 5",
                                          "New value = 6", "0x10001c, vcpu 0, step 5"]


def test_rwatch_and_awatch_see_reads_and_writes_of_the_same_value():
    s = session(MEM)
    run(s, "rwatch *(u64*)0x200000", "awatch gpa:0x200000")
    assert _stops(run(s, "continue")) == ["Access (read/write) watchpoint 2: gpa:0x200000",
                                          "Old value = 0", "New value = 5", "0x10000e, vcpu 0, step 2"]
    assert _stops(run(s, "continue")) == ["Read watchpoint 1: *(u64*)0x200000", "Value = 5",
                                          "Access (read/write) watchpoint 2: gpa:0x200000",
                                          "Value = 5", "0x100011, vcpu 0, step 3"]
    # A write of the value already there: an access, not a change.
    assert _stops(run(s, "continue")) == ["Access (read/write) watchpoint 2: gpa:0x200000",
                                          "Value = 5", "0x100018, vcpu 0, step 4"]


def test_watch_registers_and_cr_bits_with_a_condition():
    s = smep(arg=3)
    run(s, "watch $rbx if $rbx == 1")
    out = _stops(run(s, "continue"))
    assert out[:3] == ["Watchpoint 1: $rbx", "Old value = 2", "New value = 1"]
    s = smep(arg=3)
    run(s, "watch $cr4.smep")
    out = _stops(run(s, "continue"))
    assert out[:3] == ["Watchpoint 1: $cr4.smep", "Old value = 0", "New value = 1"]
    assert out[3] == "0x10003c <flip+9>, vcpu 0, step 15"


def test_watch_errors():
    s = session(MEM)
    assert run(s, "rwatch $rax") == ["Expression cannot be implemented with read/access watchpoint."]
    assert run(s, "watch 5") == ["Cannot watch constant value `5'."]
    assert run(s, "watch") == ["Argument required (expression to watch).  Usage: watch EXPR [if EXPR]"]
    assert run(s, "watch *(u64*)0x8000000000") == [
        "Cannot access memory at address 0x8000000000 (guest walk: PML4E[1] not present)"]


def test_watchpoints_in_info_breakpoints_and_delete():
    s = session(MEM)
    run(s, "watch $rax", "rwatch *(u32*)0x200000", "awatch gpa:0x200000")
    assert run(s, "info watchpoints")[1:] == [
        "1       watchpoint     keep y                      $rax",
        "2       read watchpoint keep y                      *(u32*)0x200000",
        "3       acc watchpoint keep y                      gpa:0x200000"]
    run(s, "delete 1-3")
    assert run(s, "info watchpoints") == ["No watchpoints."]


def test_stepi_with_a_watchpoint_stops_early():
    s = session(MEM)
    run(s, "watch *(u64*)0x200000")
    out = run(s, "stepi 10")
    assert "New value = 5" in out and "0x10000e, vcpu 0, step 2" in out


def test_fast_reader_agrees_with_the_evaluator_and_sees_every_write():
    from kvmdbg.debug.engine.watch_reader import reader_for
    s = session(MEM)
    run(s, "watch *(u64*)0x200000", "watch *(u32*)gpa:0x200004", "watch *(u64*)$rax")
    wps = s.breakpoints.watchpoints()
    readers = [reader_for(s, wp) for wp in wps]
    assert readers[0] is not None and readers[1] is not None and readers[2] is None
    run(s, "set *(u64*)gpa:0x200000 = 0x1122334455667788")
    assert readers[0].value().v == 0x1122334455667788 and readers[1].value().v == 0x11223344
    out = run(s, "stepi")
    assert "Old value = 0" in out and "New value = 1234605616436508552" in out
