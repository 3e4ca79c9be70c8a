"""`trace export --format ftrace FILE`: the event log as `trace-cmd report` prints a
kernel trace, so it can be read, grepped and diffed next to a real one.

Each vCPU is a QEMU-style thread `CPU N/KVM` on host CPU N, the zap worker a kworker on
the next CPU; pids are fixed fake numbers (the file must not depend on the machine that
wrote it). Fields are printed by events/format.py in the kernel's TP_printk formats; the
kvmdbg: events, which the kernel lacks, appear as kvmdbg_NAME so the line format stays
the kernel's. Lines are ordered by timestamp, as trace-cmd merges its per-CPU buffers.
"""

from __future__ import annotations

from kvmdbg.debug.pictures.history import CYCLES_PER_US
from kvmdbg.events.format import format_fields

VMM_PID = 4242              # the fake QEMU process; vCPU threads are VMM_PID + 1 + index
WORKER_PID = 117
WORKER_COMM = "kworker/u4:1"


def task(vcpu: int) -> str:
    """comm-pid of the thread that emitted an event."""
    if vcpu < 0:
        return f"{WORKER_COMM}-{WORKER_PID}"
    return f"CPU {vcpu}/KVM-{VMM_PID + 1 + vcpu}"


def timestamp(cycles: int) -> str:
    """Seconds with microseconds, from simulated cycles at 3 GHz (integer arithmetic)."""
    micros = cycles // CYCLES_PER_US
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def event_name(name: str) -> str:
    return name.replace(":", "_")


def lines(events, nr_vcpus: int = 1):
    """The report: a `cpus=N` header, then one line per event in time order."""
    yield f"cpus={nr_vcpus + 1}"
    for e in sorted(events, key=lambda e: (e.cycles, e.seq)):
        cpu = e.vcpu if e.vcpu >= 0 else nr_vcpus
        body = format_fields(e.name, e.vcpu, e.fields)
        yield (f"{task(e.vcpu):>20} [{cpu:03d}] {timestamp(e.cycles):>12}: "
               f"{event_name(e.name) + ':':<22} {body}").rstrip()


def write_text(f, events, nr_vcpus: int = 1) -> int:
    """Write the report; returns the number of event lines."""
    n = -1
    for n, line in enumerate(lines(events, nr_vcpus)):
        f.write(line + "\n")
    return n
