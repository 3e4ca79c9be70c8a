"""Going to step S by reverse steps or goto gives the state of a fresh run stopped at S."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import kut_image
from tests.reverse.oracle import fresh_at_step, fresh_at_tick, load, state

SMEP = "programs/smep_flip.bin"
PT_EDIT = "programs/pt_edit.bin"
TWO = "programs/smep_flip_2vcpu.bin"
CASES = [(SMEP, "v5.15", 6000), (SMEP, "v6.12", 6000), (PT_EDIT, None, 3000)]
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@lru_cache(maxsize=None)
def _fresh_step(prog, kvm, step):
    return fresh_at_step(prog, kvm, step)


def _ran(prog, kvm, steps):
    """A session that ran `steps` instructions by stepi (small snapshot spacing, so goto
    restores a snapshot and replays)."""
    s = load(prog, kvm)
    s.recorder.interval = 30_000
    s.step(steps)
    return s


@pytest.mark.parametrize("prog,kvm,length", CASES)
@SETTINGS
@given(data=st.data())
def test_goto_and_reverse_stepi_give_the_fresh_runs_state(prog, kvm, length, data):
    s = _ran(prog, kvm, length)
    end = s.cpu.steps
    target = data.draw(st.integers(0, end - 1), label="goto")
    s.goto(target)
    assert s.cpu.steps == target
    assert state(s) == _fresh_step(prog, kvm, target)
    back = data.draw(st.integers(1, target or 1), label="rsi")
    if target:
        s.reverse_step(back)
        assert state(s) == _fresh_step(prog, kvm, target - back)


def test_goto_forward_again_replays_the_same_future():
    s = _ran(SMEP, "v5.15", 4000)
    at_end = state(s)
    s.goto(1234)
    s.goto(4000)
    assert state(s) == at_end
    s.goto(10)
    s.step(3990)                       # forward by stepi over the recorded future
    assert state(s) == at_end


@SETTINGS
@given(moves=st.lists(st.tuples(st.sampled_from(["si", "rsi", "goto"]), st.integers(1, 900)),
                      min_size=1, max_size=6))
def test_mixed_forward_and_reverse_moves_match_fresh_runs(moves):
    s = _ran(SMEP, "v6.12", 1500)
    for kind, n in moves:
        here = s.cpu.steps
        if kind == "si":
            s.step(n)
        elif kind == "rsi":
            s.reverse_step(min(n, here) or 1)
        else:
            s.goto(min(n, 1500))
    assert state(s) == _fresh_step(SMEP, "v6.12", s.cpu.steps)


@SETTINGS
@given(st.integers(1, 3999))
def test_two_vcpus_follow_the_recorded_schedule(step):
    s = load(TWO, None, vcpus=2)
    s.recorder.interval = 30_000
    s.run(max_steps=8000)
    s.goto(min(step, s.cpu.steps))
    ticks = sum(v.cpu.steps for v in s.vm.vcpus)
    # Events raised inside a compiled block carry the step the block started at, and a
    # fresh run for fewer instructions cuts its slices (so its blocks) elsewhere: the
    # events' step stamps are left out here, everything else must match.
    assert _unstamped(state(s)) == _unstamped(fresh_at_tick(TWO, None, ticks, vcpus=2))


def _unstamped(text: str) -> str:
    return re.sub(r"^(#\d+) step \d+ ", r"\1 ", text, flags=re.M)


def test_kvm_unit_tests_pcid_image():
    image = str(kut_image("pcid.flat"))
    s = load(image, "v6.12", cpu="qemu64,+pcid,+invpcid")
    s.recorder.interval = 500_000
    s.step(47_000)                       # it exits after about 48,000 instructions
    for target in (46_999, 31_234, 777):
        s.goto(target)
        f = load(image, "v6.12", cpu="qemu64,+pcid,+invpcid")
        f.step(target)
        assert state(s) == state(f)


def test_a_write_discards_the_future_with_one_line():
    s = _ran(SMEP, "v5.15", 2000)
    s.goto(1000)
    out = s.execute("set $rbx = 5")
    assert out == "Discarding the execution history after this point."
    assert s.recorder.at_end()
    after = state(s)
    s.step(50)
    s.goto(1000)                        # the write is part of history now
    assert state(s) == after
