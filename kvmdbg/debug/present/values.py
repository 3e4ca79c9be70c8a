"""Printing values the way gdb does: natural formats, /FMT letters, the value history.

`print` shows `$N = VALUE`; `$`, `$$`, `$$N` and `$N` read the history back. The /FMT
letters are gdb's: x d u o t c a z (and s, which is the natural format here).
"""

from __future__ import annotations

from kvmdbg.debug.engine.expr import VOID, ExprError
from kvmdbg.debug.present.formats import cr3_text, eflags_text, flag_names

PRINT_FORMATS = "xduotcazsf"

_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\000", "\\": "\\\\", "\a": "\\a",
              "\b": "\\b", "\f": "\\f", "\v": "\\v", "\x1b": "\\033"}


def char_repr(code: int, quote: str = "'") -> str:
    ch = chr(code & 0xFF)
    if ch == quote:
        return "\\" + ch
    if ch in _C_ESCAPES:
        return _C_ESCAPES[ch]
    if 32 <= ord(ch) < 127:
        return ch
    return f"\\{ord(ch):03o}"


def c_string(text: str) -> str:
    return '"' + "".join(char_repr(ord(c) & 0xFF, '"') for c in text) + '"'


def format_int(s, v: int, fmt: str, size: int, pad: bool = False) -> str:
    """One integer in a gdb format letter; size in bytes sets two's complement and padding."""
    bits = 8 * (size or 8)
    u = v & ((1 << bits) - 1)
    if fmt == "x":
        return f"0x{u:0{bits // 4}x}" if pad else f"{u:#x}"
    if fmt == "z":
        return f"0x{u:0{bits // 4}x}"
    if fmt == "d":
        return str(u - (1 << bits) if u >> (bits - 1) else u)
    if fmt == "u":
        return str(u)
    if fmt == "o":
        return f"0{u:o}" if u else "0"
    if fmt == "t":
        return f"{u:0{bits}b}" if pad else f"{u:b}"
    if fmt == "c":
        c = u & 0xFF
        c = c - 256 if c >> 7 else c
        return f"{c} '{char_repr(c)}'"
    if fmt == "a":
        return s.location(u)
    raise ExprError(f'Undefined output format "{fmt}".')


def format_natural(s, val) -> str:
    t = val.type
    v = val.v
    if v is None or t is VOID:
        return "void"
    if t.kind == "str":
        return c_string(v)
    if t.kind == "error":
        return v
    if t.dtype is not None:             # a DWARF-typed value (a variable, *at, at->flags)
        from kvmdbg.debug.engine.stack import value_text
        return value_text(s, val)
    if t.kind == "struct":
        parts = [f"seq = {v.seq}", f"name = {c_string(v.name)}", f"vcpu = {v.vcpu}",
                 f"step = {v.step}"]
        for k, x in v.fields.items():
            shown = c_string(x) if isinstance(x, str) else \
                str(x).lower() if isinstance(x, bool) else f"{x:#x}" if isinstance(x, int) else str(x)
            parts.append(f"{k} = {shown}")
        return "{" + ", ".join(parts) + "}"
    if t.kind == "char":
        return format_int(s, v, "c", 1)
    if t.kind == "ptr":                 # gdb's `print symbol on`: <sym+off> after the address
        return f"({t.name}) {s.location(v)}"
    if t.kind == "code":
        return s.location(v)
    if t.kind == "flags":
        if t.name == "i386_eflags":
            return eflags_text(v)
        return flag_names(v, t.bits, True)
    if t.kind == "cr3":
        return cr3_text(v, bool(s.cpu.cr4 >> 17 & 1))       # PCIDs only with CR4.PCIDE
    return str(v)


def format_value(s, val, fmt: str = "") -> str:
    if not fmt or fmt in "sf":
        return format_natural(s, val)
    if fmt not in PRINT_FORMATS:
        raise ExprError(f'Undefined output format "{fmt}".')
    if isinstance(val.v, int):
        return format_int(s, val.v, fmt, val.type.size or 8)
    return format_natural(s, val)


class ValueHistory:
    """gdb's value history: $1, $2, ...; `$` is the last, `$$` the one before, `$$N` N back."""

    def __init__(self) -> None:
        self.values: list = []

    def add(self, val) -> int:
        from kvmdbg.debug.engine.evaluate import Value
        self.values.append(Value(val.v, val.type))
        return len(self.values)

    def lookup(self, name: str):
        """name is what follows the first '$': '' ($), '$' ($$), '$3' ($$3), '7' ($7)."""
        from kvmdbg.debug.engine.evaluate import Value
        n = len(self.values)
        if name == "" or name.startswith("$"):
            back = 0 if name == "" else 1 if name == "$" else int(name[1:])
            index = n - back
            if index < 1:
                if n == 0:
                    return Value(None, VOID)
                raise ExprError(f"History has not yet reached ${index}.")
        else:
            index = int(name)
            if index == 0:
                index = n
            if index > n or index < 1:
                raise ExprError(f"History has not yet reached ${index}.")
        got = self.values[index - 1]
        return Value(got.v, got.type)
