"""`timeline`: roots across simulated time, drawn the same way every time.

The expectations come from the spec's scenarios: under v5.15 one vCPU flipping SMEP gets
a new root per flip (flips + 1 root lines, each zapped), under v6.12 one root lives from
the first entry to the end of the run.
"""

import re

import pytest

from kvmdbg import Session
from kvmdbg.debug.pictures.timeline import ASCII, LABEL_WIDTH, UNICODE

FLIPS = 30


def ran(program="smep_flip", kvm="v5.15", arg=FLIPS, vcpus=1):
    s = Session.load(f"programs/{program}.bin", kvm=kvm, arg=arg, vcpus=vcpus)
    s.execute("continue")
    return s


@pytest.fixture(scope="module")
def v515():
    return ran(kvm="v5.15")


@pytest.fixture(scope="module")
def v612():
    return ran(kvm="v6.12")


def root_lines(text):
    return [line for line in text.splitlines() if line.startswith("root #")]


def cells(line):
    return line[LABEL_WIDTH:]


def test_v5_15_draws_a_root_per_flip_each_zapped(v515):
    out = v515.execute("timeline --ascii --roots 0")
    lines = root_lines(out)
    assert len(lines) == FLIPS + 1 == v515.vm.stats["kvmdbg_roots_allocated"]
    assert [int(re.match(r"root #(\d+)", l).group(1)) for l in lines] == list(range(1, FLIPS + 2))
    assert all("x" in cells(l) for l in lines[:-1])          # every root but the last is zapped
    assert "x" not in cells(lines[-1])
    # Births move right as time goes on: a staircase.
    starts = [len(cells(l)) - len(cells(l).lstrip()) for l in lines]
    assert starts == sorted(starts) and starts[-1] > starts[0]


def test_many_roots_fold_into_one_line(v515):
    out = v515.execute("timeline --ascii")                  # default: at most 24 root lines
    assert len(root_lines(out)) == 24
    assert "7 more roots (#13-#19) in this range" in out


def test_v6_12_one_root_spans_the_whole_run(v612):
    out = v612.execute("timeline --ascii")
    lines = root_lines(out)
    assert len(lines) == 1
    assert cells(lines[0]) == "[" + "=" * (80 - LABEL_WIDTH - 1)
    assert all(len(line) <= 80 for line in out.splitlines())


def test_axis_marks_cr4_writes_and_the_sparkline_shows_warm_up_only(v612):
    out = v612.execute("timeline --ascii").splitlines()
    axis = next(l for l in out if l.startswith("cr/memslot"))
    assert "4" in cells(axis) and set(cells(axis)) <= {"4", "-"}
    spark = next(l for l in out if l.startswith("EPT viol."))
    # v6.12 keeps its root: the EPT violations all come in the first columns.
    assert cells(spark).strip() and len(cells(spark).rstrip()) < 20


def test_markers_are_labelled_and_memslot_changes_marked():
    s = ran("memslot_overlay", kvm="v6.12", arg=3)
    out = s.execute("timeline --ascii").splitlines()
    markers = cells(next(l for l in out if l.startswith("markers")))
    assert markers.split() == ["1", "2"] * 3
    axis = cells(next(l for l in out if l.startswith("cr/memslot")))
    assert "M" in axis


def test_ascii_by_default_unicode_on_request(v612):
    plain = v612.execute("timeline")
    assert plain.isascii()
    fancy = v612.execute("timeline --unicode")
    assert UNICODE.alive in fancy and UNICODE.born in fancy and not fancy.isascii()
    v612.unicode_output = True                              # what the CLI sets on UTF-8
    try:
        assert v612.execute("timeline") == fancy
        assert v612.execute("timeline --ascii") == plain
    finally:
        v612.unicode_output = False
    assert ASCII.alive in plain


def test_output_is_deterministic():
    assert ran().execute("timeline") == ran().execute("timeline")


def test_a_range_zooms_in(v515):
    log = list(v515.vm.bus.log)
    mid = (log[0].cycles + log[-1].cycles) // 2
    out = v515.execute(f"timeline --roots 0 {mid} {mid + 20_000}")
    assert out.splitlines()[0].startswith(f"cycles {mid:,}..{mid + 20_000:,}")
    assert 0 < len(root_lines(out)) < FLIPS // 2


def test_steps_range_uses_the_current_vcpu(v515):
    out = v515.execute("timeline --steps 100 400")
    assert out.startswith("cycles ")
    assert len(root_lines(out)) < FLIPS


def test_set_width_is_obeyed(v612):
    v612.execute("set width 50")
    try:
        out = v612.execute("timeline --unicode")
    finally:
        v612.execute("set width 0")
    assert max(len(line) for line in out.splitlines()) <= 50
    assert len(cells(root_lines(out)[0])) == 50 - LABEL_WIDTH


@pytest.mark.parametrize("args, message", [
    ("5 3", "Bad range: FROM (5) must be below TO (3) cycles."),
    ("999999999999", "Bad range: the log ends at cycle"),
    ("soon", 'Invalid number "soon".'),
    ("1 2 3", "At most two times (FROM and TO)."),
    ("--wide", 'Unknown option "--wide".'),
    ("--steps 999999999", "Bad range: vcpu 0 has no events at or after step 999999999."),
])
def test_bad_input_is_one_line(v612, args, message):
    before = len(v612.errors)
    out = v612.execute(f"timeline {args}")
    assert out.startswith(message) and "\n" not in out
    assert len(v612.errors) == before + 1
    assert "Traceback" not in out and "internal error" not in out


def test_nothing_recorded_yet():
    s = Session.load("programs/smep_flip.bin", arg=3)
    s.vm.bus.log.clear()
    assert s.execute("timeline").startswith("No events recorded")
