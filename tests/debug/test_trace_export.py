"""`trace export`: Chrome trace-event JSON for Perfetto and trace-cmd report text.

The JSON is checked the way a trace viewer reads it (the trace-event format: every
complete slice has ts/dur/pid/tid, tracks are named by metadata, counters and instants
are well-formed) and against the run (one slice per exit, one track per root); the text
export line by line against the kernel's report format.
"""

import json
import re
from collections import Counter, defaultdict

import pytest

from kvmdbg import Session

PHASES = {"X", "i", "C", "M"}
FTRACE_LINE = re.compile(r"^\s*(?P<comm>\S.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d{3})\]\s+"
                         r"(?P<ts>\d+\.\d{6}): (?P<event>\w+):\s*(?P<body>.*)$")


def ran(program="smep_flip", kvm="v5.15", arg=12, vcpus=1):
    s = Session.load(f"programs/{program}.bin", kvm=kvm, arg=arg, vcpus=vcpus)
    s.execute("continue")
    return s


def export(s, path, *options):
    out = s.execute(" ".join(("trace export", *options, str(path))))
    assert out.startswith("Wrote "), out
    return path


def load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def v515_trace(tmp_path_factory):
    s = ran()
    path = export(s, tmp_path_factory.mktemp("trace") / "v515.json")
    return s, load(path)


def test_the_file_has_the_trace_event_shape(v515_trace):
    s, doc = v515_trace
    events = doc["traceEvents"]
    assert doc["displayTimeUnit"] == "ns" and doc["otherData"]["profile"] == "v5.15"
    assert {e["ph"] for e in events} <= PHASES
    for e in events:
        assert isinstance(e["name"], str) and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
        if e["ph"] == "i":
            assert e["s"] in ("t", "p", "g")
        if e["ph"] == "C":
            assert e["args"] and all(isinstance(v, int) for v in e["args"].values())
    # Metadata comes first, then the rest in time order.
    phases = [e["ph"] for e in events]
    assert phases.index("X") > max(i for i, p in enumerate(phases) if p == "M")
    body = [e["ts"] for e in events if e["ph"] != "M"]
    assert body == sorted(body)


def test_every_track_is_named(v515_trace):
    _s, doc = v515_trace
    events = doc["traceEvents"]
    threads = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    processes = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    for e in events:
        if e["ph"] in ("X", "i"):
            assert (e["pid"], e["tid"]) in threads, e
        assert e["pid"] in processes
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"CPU 0/KVM", "kvm-tdp-mmu-zap worker", "root #1"} <= names


def test_slices_match_the_run(v515_trace):
    s, doc = v515_trace
    events = doc["traceEvents"]
    stats = s.vm.stats
    exits = [e for e in events if e["ph"] == "X" and e["cat"] == "exit"]
    assert len(exits) == stats["exits"]
    assert Counter(e["name"] for e in exits)["CR_ACCESS"] == stats["kvmdbg_cr_exits"]
    assert all(e["dur"] > 0 for e in exits if e["name"] == "CR_ACCESS")
    roots = [e for e in events if e["ph"] == "X" and e["cat"] == "root" and e["name"].startswith("root #")]
    assert len(roots) == stats["kvmdbg_roots_allocated"]
    assert sum(e["args"]["freed"] for e in roots) == stats["kvmdbg_roots_freed"]
    zaps = [e for e in events if e["ph"] == "i" and e["name"] == "zap"]
    assert len(zaps) == stats["kvmdbg_roots_freed"]
    flushes = [e for e in events if e["ph"] == "i" and e["cat"] == "flush"]
    assert len(flushes) >= stats["kvmdbg_invept"]


def test_slices_on_one_track_do_not_overlap(v515_trace):
    _s, doc = v515_trace
    by_track = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X" and e["cat"] == "exit":
            by_track[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        for (_a, end), (start, _b) in zip(spans, spans[1:]):
            assert start >= end - 1e-6


def test_counters_track_sptes_and_tlb_in_time_order(v515_trace):
    _s, doc = v515_trace
    series = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "C":
            series[e["name"]].append(e["ts"])
    assert set(series) == {"live SPTEs", "TLB entries vCPU 0"}
    for times in series.values():
        assert times == sorted(times) and len(times) > 1


def test_timestamps_are_microseconds_at_3_ghz(v515_trace):
    s, doc = v515_trace
    last = max(e["ts"] + e.get("dur", 0) for e in doc["traceEvents"])
    assert last == pytest.approx(s.vm.bus.log[-1].cycles / 3000, abs=0.01)


def test_the_worker_gets_its_own_track_under_v6_1(tmp_path):
    doc = load(export(ran(kvm="v6.1", arg=4), tmp_path / "v61.json"))
    work = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "work"]
    assert len(work) == 4 and {e["tid"] for e in work} == {99}
    invalid = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["name"] == "invalid"]
    assert invalid


def test_two_vcpus_and_markers(tmp_path):
    doc = load(export(ran("smep_flip_2vcpu", arg=8, vcpus=2), tmp_path / "two.json"))
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"CPU 0/KVM", "CPU 1/KVM"} <= names
    markers = [e["name"] for e in doc["traceEvents"] if e["ph"] == "i" and e["cat"] == "marker"]
    assert markers == ["marker 1", "marker 2"]


def test_same_run_same_bytes(tmp_path):
    a = export(ran(), tmp_path / "a.json").read_bytes()
    b = export(ran(), tmp_path / "b.json").read_bytes()
    assert a == b


# --- ftrace text ---

def test_ftrace_lines_follow_the_kernels_report_format(tmp_path):
    s = ran(kvm="v6.1", arg=5)
    lines = export(s, tmp_path / "t.txt", "--format", "ftrace").read_text().splitlines()
    assert lines[0] == "cpus=2"
    parsed = [FTRACE_LINE.match(line) for line in lines[1:]]
    assert all(parsed), next(line for line, m in zip(lines[1:], parsed) if not m)
    assert len(parsed) == len(s.vm.bus.log)
    times = [float(m["ts"]) for m in parsed]
    assert times == sorted(times)
    tasks = {(m["comm"], m["pid"], m["cpu"]) for m in parsed}
    assert tasks == {("CPU 0/KVM", "4243", "000"), ("kworker/u4:1", "117", "001")}
    exits = [m for m in parsed if m["event"] == "kvm_exit"]
    assert len(exits) == s.vm.stats["exits"]
    assert re.match(r"vcpu 0 reason \w+ rip 0x[0-9a-f]+ info1 0x[0-9a-f]{16}", exits[0]["body"])
    assert any(m["event"] == "kvmdbg_root_zap" for m in parsed)


def test_ftrace_is_deterministic(tmp_path):
    a = export(ran(), tmp_path / "a.txt", "--format=ftrace").read_bytes()
    b = export(ran(), tmp_path / "b.txt", "--format=ftrace").read_bytes()
    assert a == b


# --- bad input ---

@pytest.mark.parametrize("args, message", [
    ("", "One FILE is needed."),
    ("a.json b.json", "Only one FILE."),
    ("--format svg x.json", 'Unknown format "svg" (chrome or ftrace).'),
    ("--gzip x.json", 'Unknown option "--gzip".'),
    ("/nonexistent/dir/x.json", 'Cannot write "/nonexistent/dir/x.json": No such file or directory.'),
])
def test_bad_input_is_one_line(args, message):
    s = ran(arg=2)
    out = s.execute(f"trace export {args}".strip())
    assert out.startswith(message) and "\n" not in out
    assert s.errors and "Traceback" not in out


def test_a_directory_is_not_a_file(tmp_path):
    out = ran(arg=2).execute(f"trace export {tmp_path}")
    assert out == f'Cannot write "{tmp_path}": Is a directory.'


def test_trace_alone_lists_its_subcommands():
    out = ran(arg=2).execute("trace")
    assert "trace export -- Write the recorded events to FILE." in out
