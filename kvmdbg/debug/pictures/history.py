"""What happened when, read off the event log: root lifetimes, exits, worker items.

Times are the emitter's simulated clock (Event.cycles). Each vCPU has its own clock and
the scheduler runs the smallest one first, so the clocks of different vCPUs agree to
within a scheduling quantum: good enough to draw them on one axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CYCLES_PER_US = 3000        # simulated time is shown as if the host ran at 3 GHz
EPT_VIOLATION = "EPT_VIOLATION"


@dataclass
class RootLife:
    """One root from allocation to free; None: outside what the log remembers."""
    number: int
    hpa: int = 0
    born: int | None = None
    invalidated: int | None = None
    freed: int | None = None
    zaps: list = field(default_factory=list)          # [(cycles, sptes, emitter vcpu)]


@dataclass
class Span:
    """A stretch of one vCPU's (or the worker's) time: an exit until the next entry, or a
    work item from start to end. end is None when the log ends first."""
    who: int                    # vCPU index, -1 for the worker
    start: int
    end: int | None
    name: str
    fields: dict


def time_range(events) -> tuple[int, int]:
    """(first, last) simulated cycles in the log; (0, 0) when it is empty."""
    times = [e.cycles for e in events]
    return (min(times), max(times)) if times else (0, 0)


def root_lives(events) -> list[RootLife]:
    """Every root the log mentions, by number. A root whose allocation was trimmed from
    the ring has born=None (it existed before the log starts)."""
    lives: dict[int, RootLife] = {}
    for e in events:
        number = e.fields.get("root") if e.name.startswith(("kvmdbg:root_", "kvm_mmu_get_page")) else None
        if not number:
            continue
        life = lives.get(number)
        if life is None:
            life = lives[number] = RootLife(number, e.fields.get("hpa", 0))
        if e.name == "kvm_mmu_get_page":
            if e.fields.get("created") and life.born is None:
                life.born = e.cycles
        elif e.name == "kvmdbg:root_invalidate":
            if life.invalidated is None:
                life.invalidated = e.cycles
        elif e.name == "kvmdbg:root_zap":
            life.zaps.append((e.cycles, e.fields.get("sptes", 0), e.vcpu))
        elif e.name == "kvmdbg:root_free":
            life.freed = e.cycles
    return [lives[n] for n in sorted(lives)]


def exit_spans(events) -> list[Span]:
    """Each kvm_exit until the same vCPU's next kvm_entry (the time KVM and the VMM had
    the vCPU), in log order."""
    open_exit: dict[int, Span] = {}
    spans = []
    for e in events:
        if e.name == "kvm_exit":
            span = Span(e.vcpu, e.cycles, None, e.fields.get("exit_reason", "?"), e.fields)
            open_exit[e.vcpu] = span
            spans.append(span)
        elif e.name == "kvm_entry":
            span = open_exit.pop(e.vcpu, None)
            if span is not None:
                span.end = e.cycles
    return spans


def work_spans(events) -> list[Span]:
    """The zap worker's items (kvmdbg:work_start to kvmdbg:work_end)."""
    spans = []
    current = None
    for e in events:
        if e.name == "kvmdbg:work_start":
            current = Span(-1, e.cycles, None, e.fields.get("work", "work"), e.fields)
            spans.append(current)
        elif e.name == "kvmdbg:work_end" and current is not None:
            current.end = e.cycles
            current = None
    return spans


def is_ept_violation(e) -> bool:
    return e.name == "kvm_exit" and e.fields.get("exit_reason") == EPT_VIOLATION
