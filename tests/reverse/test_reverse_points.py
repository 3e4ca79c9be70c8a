"""Reverse-continue honours breakpoints, watchpoints and catchpoints; hit counts; memory."""

from __future__ import annotations

from kvmdbg import Session

SMEP = "programs/smep_flip.bin"


def _session(kvm="v6.12", arg=0):
    return Session.load(SMEP, kvm=kvm, arg=arg)


def test_reverse_continue_stops_at_the_previous_breakpoint_hit_and_counts_it_once():
    s = _session()
    s.execute("break touch")
    steps = [s.execute("continue") and s.cpu.steps for _ in range(3)]
    bp = s.breakpoints.at(s.cpu.rip)[0]
    assert bp.hits == 3
    stop = s.reverse_continue()
    assert stop.reason == "breakpoint" and stop.step == steps[1]
    assert bp.hits == 4                  # counted, never decremented (as gdb)
    s.reverse_continue()
    assert s.cpu.steps == steps[0]
    s.execute("continue")                # forward again over the recorded future
    assert s.cpu.steps == steps[1]


def test_reverse_continue_with_a_condition_skips_the_hits_it_rejects():
    s = _session(arg=10)
    s.execute("break touch if $rbx == 8")
    for _ in range(100):                 # the hits at rbx 8, then on to the halt
        if s.run().reason == "halted":
            break
    assert s.cpu.halted
    stop = s.reverse_continue()
    assert stop.reason == "breakpoint" and s.vcpu().regs["rbx"] == 8


def test_reverse_continue_to_a_watchpoint_change():
    s = _session(arg=10)
    s.execute("watch $rbx")
    for _ in range(4):
        s.execute("continue")
    values = s.vcpu().regs["rbx"]
    s.reverse_continue()
    assert s.vcpu().regs["rbx"] == values + 1


def test_catch_root_zap_reverse_continue_matches_the_forward_stop():
    s = _session(kvm="v5.15", arg=5)
    s.execute("catch root-zap")
    s.execute("continue")
    first = (s.cpu.steps, s.execute("info roots"), s.vm.stats.snapshot())
    s.execute("continue")
    s.execute("continue")
    s.reverse_continue()
    s.reverse_continue()
    assert (s.cpu.steps, s.execute("info roots"), s.vm.stats.snapshot()) == first
    out = s.execute("reverse-continue")
    assert "No more reverse-execution history." in out and s.cpu.steps == 0


def test_snapshot_memory_limit_thins_rather_than_fails():
    s = _session(kvm="v5.15", arg=300)
    s.recorder.interval = 20_000
    s.execute("set record snapshot-memory 1M")
    s.run()
    rec = s.recorder
    assert rec.memory() <= (1 << 20) + max(len(x.blob) for x in rec.snapshots) * 2
    end = s.cpu.steps
    s.goto(end // 3)
    assert s.cpu.steps == end // 3
    assert "Snapshot memory limit is 1.0 MiB." in s.execute("show record snapshot-memory")


def test_info_record_and_goto_ends():
    s = _session()
    s.step(500)
    s.execute("goto begin")
    assert s.cpu.steps == 0
    out = s.execute("info record")
    assert "Replay mode:" in out and "Highest recorded step is 500 (vcpu 0)." in out
    s.execute("goto end")
    assert s.cpu.steps == 500 and "Record mode:" in s.execute("info record")


def test_reverse_nexti_steps_back_over_a_call_and_reverse_finish_returns_to_it():
    s = Session.load("programs/pt_edit.bin")
    s.step(2)
    call = s.cpu.rip
    assert s.decode_at(call).mnemonic == "call"
    s.execute("nexti")                          # over setup_idt
    after = s.cpu.steps
    assert after > 4
    s.execute("reverse-nexti")
    assert (s.cpu.steps, s.cpu.rip) == (2, call)
    s.goto(after - 3)                           # inside setup_idt
    s.execute("reverse-finish")
    assert (s.cpu.steps, s.cpu.rip) == (2, call)
