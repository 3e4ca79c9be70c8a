"""Symbol lookup both ways: name -> address and address -> '<name+off>'."""

from __future__ import annotations

import bisect


class Symbols:
    def __init__(self, table: dict[str, int] | None = None):
        self.by_name = dict(table or {})
        pairs = sorted((a, n) for n, a in self.by_name.items())
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> int:
        return self.by_name[name]

    def names(self):
        return sorted(self.by_name)

    def lookup(self, addr: int, max_offset: int = 0x10000) -> str:
        """'<name>' or '<name+off>' for the closest symbol at or below addr, else ''."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return ""
        off = addr - self._addrs[i]
        if off > max_offset:
            return ""
        return f"<{self._names[i]}>" if off == 0 else f"<{self._names[i]}+{off}>"
