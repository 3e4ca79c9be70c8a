"""Breakpoints, watchpoints and catchpoints: one numbered table, gdb's rules.

All three share gdb's numbering, enable/disable, dispositions (keep, del for
temporary, dis for `enable once`), conditions, ignore counts, hit counts and
command lists. Whether one *stops* is decided here (`should_stop`): the condition
is tested first, then the hit is counted, then the ignore count is used up.

Catchpoints listen on the VM's event bus only while at least one is enabled:
subscribing makes every emitter build its event, which costs time in hot paths.
When one fires during a run, the vCPU the event names is asked to stop
(Cpu.request_stop(CATCHPOINT)), so the run loop stops after the current instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmdbg.debug.engine import catchpoints
from kvmdbg.debug.engine.expr import ExprError, parse
from kvmdbg.errors import CommandError, KvmdbgError
from kvmdbg.stop_reason import CATCHPOINT



@dataclass
class Stoppoint:
    number: int
    enabled: bool = True
    disposition: str = "keep"        # keep | del | dis
    condition: str = ""
    ignore_count: int = 0
    hits: int = 0
    enable_count: int = 0            # `enable count N`: disable after N more stops
    commands: list = field(default_factory=list)
    _cond_ast: object = None

    type_name = "breakpoint"
    noun = "breakpoint"

    def set_condition(self, text: str) -> None:
        text = (text or "").strip()
        self._cond_ast = parse(text) if text else None
        self.condition = text

    @property
    def temporary(self) -> bool:
        return self.disposition == "del"

    def address_column(self) -> str:
        return ""

    def what(self, s) -> str:
        return ""


@dataclass
class Breakpoint(Stoppoint):
    address: int = 0

    def address_column(self) -> str:
        return f"{self.address:#x}"

    def what(self, s) -> str:
        row = _row(s, self.address)
        if row is not None:
            return f"{row.file}:{row.line}"
        return s.symbols.lookup(self.address)

    def announce(self, s) -> str:
        word = "Temporary breakpoint" if self.temporary else "Breakpoint"
        row = _row(s, self.address)
        if row is not None:         # gdb's words when the line table covers the address
            return f"{word} {self.number} at {self.address:#x}: file {row.file}, line {row.line}."
        return f"{word} {self.number} at {s.location(self.address)}"


def _row(s, addr: int):
    di = getattr(s, "debug_info", None)
    return di.row_at(addr) if di is not None else None


WATCH_TYPES = {"write": "watchpoint", "read": "read watchpoint", "access": "acc watchpoint"}
WATCH_WORDS = {"write": "Watchpoint", "read": "Read watchpoint",
               "access": "Access (read/write) watchpoint"}


@dataclass
class Watchpoint(Stoppoint):
    expression: str = ""
    access: str = "write"             # write | read | access
    vcpu: int = 0                     # registers in the expression are this vCPU's
    location: tuple | None = None     # (space, address, size) when it watches memory
    old: object = None                # last value seen (Value)
    _ast: object = None

    noun = "watchpoint"

    @property
    def type_name(self) -> str:
        return WATCH_TYPES[self.access]

    def what(self, s) -> str:
        return self.expression

    def announce(self, s) -> str:
        return f"{WATCH_WORDS[self.access]} {self.number}: {self.expression}"


@dataclass
class Catchpoint(Stoppoint):
    kind: catchpoints.CatchKind = None
    argument: str = ""

    type_name = "catchpoint"
    noun = "catchpoint"

    @property
    def label(self) -> str:
        return self.kind.name + (f" {self.argument}" if self.argument else "")

    def what(self, s) -> str:
        return f"{self.kind.family} '{self.label}'"

    def announce(self, s) -> str:
        word = "Temporary catchpoint" if self.temporary else "Catchpoint"
        return f"{word} {self.number} ({self.what(s)})"


class BreakpointTable:
    """Per Session (never class state): the numbered stop points and the bus listener."""

    def __init__(self, session):
        self.s = session
        self._points: dict[int, Stoppoint] = {}   # by number, in number order
        self._by_address: dict[int, list] = {}     # breakpoint address -> breakpoints there
        self._next = 1
        self.last_created: int | None = None
        self._bus = None
        self._names = catchpoints.event_names()
        self.caught: list = []            # (catchpoint, event) that stopped the current run
        self.running = False              # catchpoints stop runs only

    # --- the table ---

    def __iter__(self):
        return iter(list(self._points.values()))     # numbers only grow: already in order

    def __len__(self) -> int:
        return len(self._points)

    def get(self, number: int) -> Stoppoint:
        p = self._points.get(number)
        if p is None:
            raise CommandError(f"No breakpoint number {number}.")
        return p

    def _add(self, point: Stoppoint) -> Stoppoint:
        self._points[point.number] = point
        self._next += 1
        self.last_created = point.number
        if isinstance(point, Breakpoint):
            self._by_address.setdefault(point.address, []).append(point)
        elif isinstance(point, Catchpoint):
            self.sync_listener()
        return point

    def _remove(self, point: Stoppoint) -> None:
        self._points.pop(point.number, None)
        if isinstance(point, Breakpoint):
            here = self._by_address.get(point.address, [])
            if point in here:
                here.remove(point)
            if not here:
                self._by_address.pop(point.address, None)

    def add_breakpoint(self, address: int, temporary=False, condition="") -> Breakpoint:
        bp = Breakpoint(self._next, disposition="del" if temporary else "keep", address=address)
        bp.set_condition(condition)
        return self._add(bp)

    def add_watchpoint(self, expression: str, ast, access: str, vcpu: int, location, old,
                       condition="") -> Watchpoint:
        wp = Watchpoint(self._next, expression=expression, access=access, vcpu=vcpu,
                        location=location, old=old, _ast=ast)
        wp.set_condition(condition)
        return self._add(wp)

    def add_catchpoint(self, kind, argument: str, temporary=False, condition="") -> Catchpoint:
        cp = Catchpoint(self._next, disposition="del" if temporary else "keep", kind=kind,
                        argument=argument)
        cp.set_condition(condition)
        return self._add(cp)

    def delete(self, number: int) -> None:
        self._remove(self.get(number))
        self.sync_listener()

    def delete_all(self) -> None:
        self._points.clear()
        self._by_address.clear()
        self.sync_listener()

    # --- views the run loop uses ---

    def addresses(self) -> set:
        return {p.address for p in self._points.values() if isinstance(p, Breakpoint) and p.enabled}

    def at(self, address: int) -> list:
        return [p for p in self._by_address.get(address, ()) if p.enabled]

    def watchpoints(self) -> list:
        return [p for p in self if isinstance(p, Watchpoint) and p.enabled]

    def catchpoints(self) -> list:
        return [p for p in self if isinstance(p, Catchpoint) and p.enabled]

    def refresh_watch_values(self) -> None:
        """After `run`/`starti` rebuilt the VM: watch from the new values, not the old run's."""
        from kvmdbg.debug.engine.evaluate import evaluate_node
        for wp in self:
            if isinstance(wp, Watchpoint):
                try:
                    wp.old = evaluate_node(self.s, wp._ast, vcpu=wp.vcpu)
                except KvmdbgError:
                    wp.old = None

    # --- stopping rules (gdb's bpstat_check_breakpoint_conditions) ---

    def should_stop(self, point: Stoppoint, vcpu: int, event=None):
        """(stop?, error line). A condition that cannot be evaluated stops, with the reason."""
        if point._cond_ast is not None:
            from kvmdbg.debug.engine.evaluate import evaluate_node
            try:
                ok = evaluate_node(self.s, point._cond_ast, vcpu=vcpu, event=event).truthy()
            except KvmdbgError as e:
                point.hits += 1
                return True, f"Error in testing condition for {point.noun} {point.number}: {e}"
            if not ok:
                return False, ""
        point.hits += 1
        if point.ignore_count > 0:
            point.ignore_count -= 1
            return False, ""
        return True, ""

    def after_stop(self, point: Stoppoint) -> None:
        """Dispositions: temporary ones go, `enable once`/`enable count` ones disable."""
        if point.disposition == "del":
            self._remove(point)
            self.sync_listener()
        elif point.disposition == "dis":
            if point.enable_count > 0:
                point.enable_count -= 1
                if point.enable_count > 0:
                    return
            point.enabled = False
            point.disposition = "keep"
            self.sync_listener()

    # --- the event bus ---

    def sync_listener(self) -> None:
        """Listen on the current VM's bus exactly while an enabled catchpoint exists."""
        bus = self.s.vm.bus
        want = any(isinstance(p, Catchpoint) and p.enabled for p in self._points.values())
        if self._bus is not None and (self._bus is not bus or not want):
            try:
                self._bus.unsubscribe(self._on_event)
            except ValueError:
                pass
            self._bus = None
        if want and self._bus is None:
            bus.subscribe(self._on_event)
            self._bus = bus

    def _on_event(self, ev) -> None:
        if not self.running or ev.name not in self._names:
            return
        for cp in self.catchpoints():
            if ev.name not in cp.kind.events or not cp.kind.matches(ev, cp.argument):
                continue
            if any(c is cp for c, _, _ in self.caught):
                continue            # one stop per catchpoint, however many events match
            stop, err = self.should_stop(cp, ev.vcpu, ev)
            if not stop:
                continue
            self.caught.append((cp, ev, err))
            vcpus = self.s.vm.vcpus
            v = vcpus[ev.vcpu] if 0 <= ev.vcpu < len(vcpus) else vcpus[self.s.current]
            v.cpu.request_stop(CATCHPOINT)


MAX_NUMBER = 2**31 - 1          # gdb's breakpoint numbers are C ints
MAX_RANGE = 100_000


def parse_numbers(text: str, usage_fn=None, noun: str = "breakpoint") -> list[int]:
    """'1 3-5 $bpnum' style lists of breakpoint numbers (gdb's number_or_range_parser)."""
    from kvmdbg.debug.commands.registry import usage_error
    out = []
    for word in text.split():
        try:
            if "-" in word.strip("-"):
                lo, hi = word.split("-", 1)
                a, b = int(lo, 0), int(hi, 0)
                if a > b or a < 0 or b > MAX_NUMBER:
                    raise ValueError
                if b - a >= MAX_RANGE:       # the work follows the text, not the numbers in it
                    raise CommandError(f"Bad {noun} range '{word}': at most {MAX_RANGE:,} "
                                       "numbers in one range.")
                out.extend(range(a, b + 1))
            else:
                n = int(word, 0)
                if n < 0 or n > MAX_NUMBER:
                    raise ValueError
                out.append(n)
        except ValueError:
            detail = f"Bad {noun} number '{word}'."
            if usage_fn is not None:
                raise usage_error(usage_fn, detail) from None
            raise CommandError(detail) from None
    return out


__all__ = ["BreakpointTable", "Breakpoint", "Watchpoint", "Catchpoint", "parse_numbers",
           "ExprError"]
