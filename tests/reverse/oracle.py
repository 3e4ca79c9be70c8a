"""The oracle of reverse execution: everything a fresh run stopped at the same point shows."""

from __future__ import annotations

import hashlib

from kvmdbg import Session

VIEWS = ("info all-registers", "info tlb", "info roots", "info sptes", "info mmu")


def state(s) -> str:
    """Every vCPU's registers, TLB, roots and SPTEs (the model's own views), the counters,
    a hash of all host memory, the console and the event log."""
    out = []
    saved = s.current
    for v in s.vm.vcpus:
        s.current = v.index
        out += [s.execute(c) for c in VIEWS]
        c = v.cpu
        out.append(repr((c.steps, c.cycles, c.halted, c.shutdown, c.walks, c.extra_cycles)))
    s.current = saved
    out.append(s.execute("info stats"))
    h = hashlib.sha256()
    pages = s.vm.host.pages
    for pfn in sorted(pages):
        h.update(pfn.to_bytes(8, "little") + bytes(pages[pfn]))
    out.append(h.hexdigest())
    out.append(bytes(s.vm.console).decode("latin-1"))
    out.append(repr(s.vm.bus.seq))
    out += [e.format() for e in s.vm.bus.log]
    out.append(repr(sorted(s.vm.exit_reasons.items())))
    return "\n".join(out)


def load(prog: str, kvm: str | None = None, **kw) -> Session:
    return Session.load(prog, kvm=kvm, **kw)


def fresh_at_step(prog: str, kvm, step: int, **kw) -> str:
    """A fresh session stepped to `step` (one vCPU: stepi)."""
    s = load(prog, kvm, **kw)
    s.step(step)
    return state(s)


def fresh_at_tick(prog: str, kvm, ticks: int, **kw) -> str:
    """A fresh session run (all vCPUs, as continue does) for `ticks` instructions in all."""
    s = load(prog, kvm, **kw)
    if ticks:
        s.run(max_steps=ticks)
    return state(s)
