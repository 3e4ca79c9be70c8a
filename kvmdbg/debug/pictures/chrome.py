"""`trace export FILE`: the event log as Chrome trace-event JSON, which ui.perfetto.dev
and chrome://tracing open.

Layout: process 1 is the VM, one thread track per vCPU (exits as complete 'X' slices
from kvm_exit to the next kvm_entry, CR writes and flushes as instants) and one for the
zap worker (its work items as slices); process 2 holds one track per EPT root, a slice
from allocation to free with its invalid stretch nested inside and its zaps as instants.
Counter tracks ('C') show live SPTEs and each vCPU's TLB entries as sampled at exits and
entries. Timestamps are microseconds of simulated time at 3 GHz, and the event order is
fixed, so the same run gives the same file byte for byte.
"""

from __future__ import annotations

import json

from kvmdbg.debug.pictures.history import (CYCLES_PER_US, exit_spans, root_lives, time_range,
                                           work_spans)

VM_PID, ROOTS_PID = 1, 2
WORKER_TID = 99
FLUSHES = {"kvmdbg:invept": "INVEPT", "kvmdbg:invvpid": "INVVPID",
           "kvmdbg:remote_tlb_flush": "remote TLB flush", "kvm_mmu_zap_all_fast": "zap all (fast)"}


def vcpu_tid(index: int) -> int:
    """vCPU i is thread i + 1 of the VM process; the worker (-1) is WORKER_TID."""
    return index + 1 if index >= 0 else WORKER_TID


def us(cycles: int) -> float:
    return round(cycles / CYCLES_PER_US, 3)


def trace_events(events, samples=(), nr_vcpus: int = 1, title: str = "kvmdbg") -> list[dict]:
    """The traceEvents list: metadata first, then everything else by time."""
    events = list(events)
    first, last = time_range(events)
    body: list[dict] = []
    body += _exit_slices(events, last)
    body += _work_slices(events, last)
    roots = root_lives(events)
    body += _root_slices(roots, first, last)
    body += _instants(events)
    body += _counters(samples, events[0].seq if events else 0)
    order = {id(ev): i for i, ev in enumerate(body)}
    body.sort(key=lambda ev: (ev["ts"], ev["pid"], ev["tid"], -ev.get("dur", 0), order[id(ev)]))
    return _metadata(title, nr_vcpus, roots) + body


def write_json(path_or_file, events, samples=(), nr_vcpus: int = 1, title: str = "kvmdbg",
               other: dict | None = None) -> int:
    """Write the trace file, one event per line (diffable); returns the number of events."""
    items = trace_events(events, samples, nr_vcpus, title)
    head = {"displayTimeUnit": "ns",
            "otherData": dict(other or {}, clock=f"simulated cycles at 3 GHz ({CYCLES_PER_US} per us)")}
    text = json.dumps(head, sort_keys=True)[:-1] + ',"traceEvents":[\n'
    text += ",\n".join(json.dumps(ev, sort_keys=True) for ev in items) + "\n]}\n"
    path_or_file.write(text)
    return len(items)


def _metadata(title: str, nr_vcpus: int, roots) -> list[dict]:
    def meta(name, pid, tid, value):
        return {"ph": "M", "name": name, "pid": pid, "tid": tid, "ts": 0, "args": value}
    out = [meta("process_name", VM_PID, 0, {"name": title}),
           meta("process_sort_index", VM_PID, 0, {"sort_index": 1}),
           meta("process_name", ROOTS_PID, 0, {"name": "EPT roots"}),
           meta("process_sort_index", ROOTS_PID, 0, {"sort_index": 2})]
    for i in range(nr_vcpus):
        out.append(meta("thread_name", VM_PID, vcpu_tid(i), {"name": f"CPU {i}/KVM"}))
        out.append(meta("thread_sort_index", VM_PID, vcpu_tid(i), {"sort_index": i}))
    out.append(meta("thread_name", VM_PID, WORKER_TID, {"name": "kvm-tdp-mmu-zap worker"}))
    out.append(meta("thread_sort_index", VM_PID, WORKER_TID, {"sort_index": nr_vcpus}))
    for r in roots:
        out.append(meta("thread_name", ROOTS_PID, r.number, {"name": f"root #{r.number}"}))
        out.append(meta("thread_sort_index", ROOTS_PID, r.number, {"sort_index": r.number}))
    return out


def _slice(name, cat, pid, tid, start, end, args) -> dict:
    """A complete slice; an end stamped by a vCPU whose clock lags (another vCPU freed the
    root) is clamped so no slice runs backwards."""
    end = max(start, end)
    return {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": us(start),
            "dur": round(us(end) - us(start), 3), "args": args}


def _exit_slices(events, last: int) -> list[dict]:
    out = []
    for span in exit_spans(events):
        f = span.fields
        args = {"rip": hex(f.get("guest_rip", 0)), "info1": hex(f.get("info1", 0)),
                "info2": hex(f.get("info2", 0)), "until_entry": span.end is not None}
        out.append(_slice(span.name, "exit", VM_PID, vcpu_tid(span.who), span.start,
                          span.end if span.end is not None else last, args))
    return out


def _work_slices(events, last: int) -> list[dict]:
    return [_slice(s.name, "work", VM_PID, WORKER_TID, s.start, s.end if s.end is not None else last, {})
            for s in work_spans(events)]


def _root_slices(roots, first: int, last: int) -> list[dict]:
    out = []
    for r in roots:
        born = r.born if r.born is not None else first
        end = r.freed if r.freed is not None else last
        args = {"hpa": hex(r.hpa), "allocated_in_log": r.born is not None, "freed": r.freed is not None}
        out.append(_slice(f"root #{r.number}", "root", ROOTS_PID, r.number, born, end, args))
        if r.invalidated is not None:
            end = max(born, end)
            inside = min(max(r.invalidated, born), end)
            out.append(_slice("invalid", "root", ROOTS_PID, r.number, inside, end, {}))
        for t, sptes, who in r.zaps:
            out.append({"ph": "i", "s": "t", "name": "zap", "cat": "zap", "pid": ROOTS_PID,
                        "tid": r.number, "ts": us(t),
                        "args": {"sptes": sptes, "by": f"vcpu{who}" if who >= 0 else "worker"}})
    return out


def _instants(events) -> list[dict]:
    out = []
    for e in events:
        if e.name in FLUSHES:
            name, cat, scope = FLUSHES[e.name], "flush", "t"
            if e.name == "kvmdbg:invept":
                name = f"INVEPT {e.fields.get('type', '')}".rstrip()
            if e.name == "kvm_mmu_zap_all_fast":
                cat = "zap"
        elif e.name == "kvm_cr":
            name, cat, scope = f"CR{e.fields.get('cr', 0)} = {e.fields.get('val', 0):#x}", "cr", "t"
        elif e.name == "kvmdbg:marker":
            name, cat, scope = f"marker {e.fields.get('value', '')}", "marker", "g"
        elif e.name == "kvmdbg:memslot":
            name, cat, scope = f"memslot {e.fields.get('op', '')} slot {e.fields.get('slot', '')}", "memslot", "p"
        else:
            continue
        args = {k: (hex(v) if isinstance(v, int) and not isinstance(v, bool) and k in ("val", "eptp") else v)
                for k, v in e.fields.items()}
        out.append({"ph": "i", "s": scope, "name": name, "cat": cat, "pid": VM_PID,
                    "tid": vcpu_tid(e.vcpu), "ts": us(e.cycles), "args": args})
    return out


def _counters(samples, first_seq: int) -> list[dict]:
    """'C' events where a counter changes: live SPTEs (VM-wide) and TLB entries per vCPU.
    Samples older than the oldest logged event are dropped with the events they belonged to."""
    out = []
    last_sptes = None
    last_tlb: dict[int, int] = {}
    for seq, cycles, vcpu, tlb_entries, live_sptes in sorted(samples, key=lambda s: (s[1], s[0])):
        if seq < first_seq:
            continue
        if live_sptes != last_sptes:
            out.append({"ph": "C", "name": "live SPTEs", "pid": VM_PID, "tid": 0, "ts": us(cycles),
                        "args": {"sptes": live_sptes}})
            last_sptes = live_sptes
        if last_tlb.get(vcpu) != tlb_entries:
            out.append({"ph": "C", "name": f"TLB entries vCPU {vcpu}", "pid": VM_PID, "tid": 0,
                        "ts": us(cycles), "args": {"entries": tlb_entries}})
            last_tlb[vcpu] = tlb_entries
    return out
