"""`timeline`: one line per root across simulated time, an axis of CR writes and memslot
changes, the markers of port 0x512, and a sparkline of EPT violations.

A column is a bucket of simulated cycles; what happened in it is drawn with one
character, the most telling one winning (a zap over a free over a birth). Unicode box
and block characters on a UTF-8 terminal, plain ASCII otherwise; either way the output
depends only on the events, the range and the width.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from kvmdbg.debug.pictures.history import is_ept_violation, root_lives

LABEL_WIDTH = 12
MIN_WIDTH = LABEL_WIDTH + 20


@dataclass(frozen=True)
class Glyphs:
    alive: str
    invalid: str
    born: str
    freed: str
    zapped: str
    axis: str
    memslot: str
    mixed: str
    spark: str              # eight levels, lowest first
    ellipsis: str


UNICODE = Glyphs(alive="━", invalid="┄", born="┣", freed="┫", zapped="╳", axis="─",
                 memslot="◆", mixed="✱", spark="▁▂▃▄▅▆▇█", ellipsis="⋮")
ASCII = Glyphs(alive="=", invalid="-", born="[", freed="]", zapped="x", axis="-",
               memslot="M", mixed="*", spark=".,:-=+*#", ellipsis=":")


@dataclass(frozen=True)
class Window:
    """The simulated-time range [start, end] drawn over `columns` character cells."""
    start: int
    end: int
    columns: int

    def column(self, t: int) -> int:
        span = max(1, self.end - self.start)
        return min(self.columns - 1, max(0, (t - self.start) * self.columns // span))

    def holds(self, t: int | None) -> bool:
        return t is not None and self.start <= t <= self.end

    @property
    def per_column(self) -> int:
        return max(1, -(-(self.end - self.start) // self.columns))


def short(n: int) -> str:
    """12345678 -> '12.3M': tick labels that fit under a column or two."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


def render(events, window: Window, glyphs: Glyphs, max_roots: int = 0) -> list[str]:
    """The timeline's lines (without the title). max_roots > 0 keeps the first and last
    roots and folds the ones between into one line."""
    lines = _root_lines(events, window, glyphs, max_roots)
    lines.append(_label("cr/memslot") + _axis(events, window, glyphs))
    lines.append(_label("markers") + _markers(events, window))
    spark, peak = _sparkline(events, window, glyphs)
    lines.append(_label("EPT viol.") + spark)
    lines.append(_label("cycles") + _scale(window))
    lines += _legend(glyphs, peak, LABEL_WIDTH + window.columns)
    return [line.rstrip() for line in lines]


def _label(text: str) -> str:
    return f"{text:<{LABEL_WIDTH - 1}} "


def _root_lines(events, window: Window, g: Glyphs, max_roots: int) -> list[str]:
    lives = [r for r in root_lives(events)
             if (r.born is None or r.born <= window.end) and (r.freed is None or r.freed >= window.start)]
    if not lives:
        return [_label("roots") + "(no root alive in this range)"]
    head, tail, hidden = lives, [], []
    if max_roots and len(lives) > max_roots:
        keep_first = max_roots // 2
        keep_last = max_roots - keep_first
        head, hidden, tail = lives[:keep_first], lives[keep_first:-keep_last], lives[-keep_last:]
    lines = [_label(f"root #{r.number}") + _root_cells(r, window, g) for r in head]
    if hidden:
        lines.append(f"{g.ellipsis:>{LABEL_WIDTH - 2}}  {len(hidden)} more roots "
                     f"(#{hidden[0].number}-#{hidden[-1].number}) in this range")
    lines += [_label(f"root #{r.number}") + _root_cells(r, window, g) for r in tail]
    return lines


def _root_cells(life, window: Window, g: Glyphs) -> str:
    cells = [" "] * window.columns
    first = window.column(life.born) if window.holds(life.born) else 0
    last = window.column(life.freed) if window.holds(life.freed) else window.columns - 1
    for c in range(first, last + 1):
        cells[c] = g.alive
    if life.invalidated is not None and life.invalidated <= window.end:
        for c in range(window.column(max(life.invalidated, window.start)), last + 1):
            cells[c] = g.invalid
    if window.holds(life.born):
        cells[first] = g.born
    if window.holds(life.freed):
        cells[last] = g.freed
    for t, _sptes, _who in life.zaps:
        if window.holds(t):
            cells[window.column(t)] = g.zapped
    return "".join(cells)


def _axis(events, window: Window, g: Glyphs) -> str:
    """CR writes as the register's digit (4 for CR4), memslot changes as a diamond."""
    cells = [g.axis] * window.columns
    for e in events:
        if e.name == "kvm_cr":
            mark = format(e.fields.get("cr", 0), "x")
        elif e.name == "kvmdbg:memslot":
            mark = g.memslot
        else:
            continue
        if not window.holds(e.cycles):
            continue
        c = window.column(e.cycles)
        cells[c] = mark if cells[c] in (g.axis, mark) else g.mixed
    return "".join(cells)


def _markers(events, window: Window) -> str:
    """Each marker's value written where it happened; one that would overwrite an
    earlier label shows as '*' if its own cell is free, else not at all."""
    cells = [" "] * window.columns
    for e in events:
        if e.name != "kvmdbg:marker" or not window.holds(e.cycles):
            continue
        c = window.column(e.cycles)
        text = str(e.fields.get("value", ""))
        if all(x == " " for x in cells[c:c + len(text)]) and c + len(text) <= window.columns:
            cells[c:c + len(text)] = list(text)
        elif cells[c] == " ":
            cells[c] = "*"
    return "".join(cells)


def _sparkline(events, window: Window, g: Glyphs) -> tuple[str, int]:
    counts = [0] * window.columns
    for e in events:
        if is_ept_violation(e) and window.holds(e.cycles):
            counts[window.column(e.cycles)] += 1
    peak = max(counts)
    if not peak:
        return "", 0
    levels = len(g.spark)
    return "".join(g.spark[(n * levels + peak - 1) // peak - 1] if n else " " for n in counts), peak


def _scale(window: Window) -> str:
    """Start, middle and end of the range under the columns they belong to."""
    cells = [" "] * window.columns
    left, mid, right = short(window.start), short((window.start + window.end) // 2), short(window.end)
    cells[:len(left)] = left
    m = window.columns // 2 - len(mid) // 2
    if m > len(left) + 1 and m + len(mid) < window.columns - len(right) - 1:
        cells[m:m + len(mid)] = mid
    cells[window.columns - len(right):] = right
    return "".join(cells)


def _legend(g: Glyphs, peak: int, width: int) -> list[str]:
    """What the characters mean, wrapped to the timeline's width."""
    texts = (f"roots: {g.born} allocated  {g.alive} valid  {g.invalid} invalid  {g.zapped} zapped  "
             f"{g.freed} freed",
             f"axis: digit N = a CRN write  {g.memslot} memslot change  {g.mixed} both",
             f"EPT violations per column: {g.spark[0]} 1 .. {g.spark[-1]} {peak}" if peak
             else "no EPT violations in this range")
    return [line for text in texts for line in textwrap.wrap(text, width, break_on_hyphens=False)]
