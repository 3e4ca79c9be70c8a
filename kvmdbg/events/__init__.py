"""The one event bus: every state change worth seeing is an Event on it.

Kernel tracepoints keep their kernel names (kvm_exit, kvm_cr, ...); events the
kernel has no tracepoint for live in the ``kvmdbg:`` namespace. Emitting costs a
single attribute test when nobody listens (``if bus.active``), so hot paths call
``bus.active`` before building an event.

Every event carries its global sequence number, the emitting vCPU (-1: the zap
worker), that vCPU's step and its clock in simulated cycles (``cycles``), so
timelines and trace exports can place events in simulated time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class Event:
    seq: int
    name: str
    vcpu: int
    step: int
    fields: dict = field(default_factory=dict)
    cycles: int = 0        # the emitter's simulated clock (vCPU cycles, or the worker's clock)

    def format(self) -> str:
        """'#SEQ step S vcpuN name: fields', the fields as the kernel's TP_printk prints them."""
        from kvmdbg.events.format import format_fields
        who = f"vcpu{self.vcpu}" if self.vcpu >= 0 else "worker"
        body = format_fields(self.name, self.vcpu, self.fields)
        return f"#{self.seq} step {self.step} {who} {self.name}: {body}".rstrip()


class EventBus:
    """Sequence-numbered events; listeners are called synchronously in order."""

    def __init__(self, keep: int = 0):
        self._listeners: list = []
        self.seq = 0
        self.keep = keep            # how many events to remember in .log (0: none)
        self.log: deque = deque(maxlen=keep or None)
        self.active = keep > 0

    def set_keep(self, keep: int) -> None:
        """Remember the last `keep` events (0: none); recording makes the bus active."""
        self.keep = keep
        self.log = deque(self.log, maxlen=keep or None) if keep else deque()
        self.active = bool(self._listeners) or keep > 0

    def subscribe(self, fn) -> None:
        self._listeners.append(fn)
        self.active = True

    def unsubscribe(self, fn) -> None:
        self._listeners.remove(fn)
        self.active = bool(self._listeners) or self.keep > 0

    def emit(self, name: str, vcpu: int = 0, step: int = 0, **fields) -> Event:
        return self.record(name, vcpu, step, 0, fields)

    def record(self, name: str, vcpu: int, step: int, cycles: int, fields: dict) -> Event:
        """emit() with the emitter's simulated time; fields stay a plain dict so no field
        name (not even 'cycles') can clash with the event's own attributes."""
        self.seq += 1
        ev = Event(self.seq, name, vcpu, step, fields, cycles)
        if self.keep:
            self.log.append(ev)
        for fn in self._listeners:
            fn(ev)
        return ev
