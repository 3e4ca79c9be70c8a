"""C types from DWARF (base, pointer, typedef, const/volatile, struct/union, array, enum,
function) and gdb's way of naming them (`whatis`), expanding them (`ptype`) and printing
values of them (`print`, `info locals`, frame arguments).

A DType is built from its DIE on first use and cached by the DIE's offset, so a struct
that points to itself is fine. Values are the bytes of the object (little-endian).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# DW_ATE_*: how a base type's bytes are read.
ATE_BOOLEAN, ATE_FLOAT, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED, ATE_UNSIGNED_CHAR = \
    0x2, 0x4, 0x5, 0x6, 0x7, 0x8
REPEAT_THRESHOLD = 10          # gdb's `set print repeats`
PRINT_ELEMENTS = 200           # gdb's `set print elements`


@dataclass(eq=False)
class DType:
    kind: str                   # base void ptr typedef const volatile struct union array enum func
    name: str = ""
    size: int = 0
    encoding: int = 0           # base types: DW_ATE_*
    _target: object = None      # (db, offset) until resolved, then a DType (or None: void)
    members: list = field(default_factory=list)     # struct/union: Member; enum: (name, value)
    count: int | None = None    # arrays: elements (None: unknown bound)
    params: list = field(default_factory=list)      # func: parameter DTypes
    varargs: bool = False
    prototyped: bool = False

    @property
    def target(self):
        t = self._target
        if isinstance(t, tuple):
            db, off = t
            t = self._target = db.type_at(off)
        return t

    def strip(self) -> "DType":
        """Without typedefs and qualifiers (what the bytes are)."""
        t = self
        while t is not None and t.kind in ("typedef", "const", "volatile"):
            t = t.target
        return t if t is not None else VOID

    @property
    def byte_size(self) -> int:
        t = self.strip()
        if t.kind == "array":
            return (t.count or 0) * t.target.byte_size if t.target else 0
        if t.kind == "ptr":
            return t.size or 8
        return t.size

    @property
    def signed(self) -> bool:
        t = self.strip()
        return t.kind in ("base", "enum") and t.encoding in (ATE_SIGNED, ATE_SIGNED_CHAR)

    def is_char(self) -> bool:
        t = self.strip()
        return t.kind == "base" and t.encoding in (ATE_SIGNED_CHAR, ATE_UNSIGNED_CHAR)

    def member(self, name: str):
        t = self.strip()
        for m in t.members if t.kind in ("struct", "union") else ():
            if m.name == name:
                return m
            if not m.name:                              # an anonymous struct/union member
                inner = m.type.member(name)
                if inner is not None:
                    return Member(inner.name, inner.type, m.offset + inner.offset,
                                  inner.bit_size, inner.bit_offset)
        return None


@dataclass
class Member:
    name: str
    type: DType
    offset: int                 # bytes from the start of the struct
    bit_size: int = 0
    bit_offset: int = 0         # from the least significant bit of the storage unit


VOID = DType("void", "void")


# --- names (gdb's c_print_type) ---

def name(t: DType | None) -> str:
    """`unsigned int`, `ac_test_t *`, `pt_element_t [6]`, `int (ac_test_t *)`."""
    return declarator(t, "")


def declarator(t: DType | None, inner: str) -> str:
    """The C declaration of `inner` with type t (inner '' gives the type's own name)."""
    prefix, suffix = _parts(t, inner)
    return f"{prefix} {suffix}" if suffix else prefix


def _parts(t, inner: str):
    """(what goes before the name, the name with its pointer/array/function parts)."""
    t = t if t is not None else VOID
    k = t.kind
    if k == "ptr":
        tgt = t.target if t.target is not None else VOID
        inner2 = "*" + inner
        if tgt.strip().kind in ("array", "func") and tgt.kind not in ("typedef",):
            inner2 = f"({inner2})"
        return _parts(tgt, inner2)
    if k == "array":
        return _parts(t.target, f"{inner}[{t.count if t.count is not None else ''}]")
    if k == "func":
        params = ", ".join(name(p) for p in t.params)
        if t.varargs:
            params = params + ", ..." if params else "..."
        elif not params and t.prototyped:
            params = "void"
        return _parts(t.target, f"{inner}({params})")
    if k in ("const", "volatile"):
        base = t.target if t.target is not None else VOID
        if base.kind in ("ptr",):
            p, s = _parts(base, f" {k} {inner}".rstrip() if inner else f" {k}")
            return p, s
        p, s = _parts(base, inner)
        return f"{k} {p}", s
    return _base_name(t), inner


def _base_name(t: DType) -> str:
    if t.kind in ("struct", "union", "enum"):
        return f"{t.kind} {t.name}" if t.name else f"{t.kind} {{...}}"
    return t.name or "void"


# --- ptype ---

def ptype_lines(t: DType, inner: str = "") -> list:
    """gdb's ptype: typedefs at the top resolved (through pointers, arrays and qualifiers
    too), structs/unions/enums expanded; members keep their typedef names."""
    return _expand(_resolved(t), inner, 0)


def _resolved(t: DType) -> DType:
    while t.kind == "typedef":
        t = t.target if t.target is not None else VOID
    if t.kind in ("ptr", "array", "const", "volatile") and t.target is not None:
        inner = _resolved(t.target)
        if inner is not t.target:
            return DType(t.kind, t.name, t.size, _target=inner, count=t.count)
    return t


def _expand(t: DType, inner: str, indent: int) -> list:
    # Find the struct/union/enum under pointers/arrays/qualifiers, expand it, and put the
    # declarator parts after its closing brace: `struct {...} *` becomes `struct {` ... `} *`.
    core = t
    while core.kind in ("ptr", "array", "const", "volatile", "func") and core.target is not None:
        core = core.target
    if core.kind not in ("struct", "union", "enum"):
        return [declarator(t, inner)]
    head = f"{core.kind} {core.name} " if core.name else f"{core.kind} "
    text = declarator(t, inner)
    rest = text[len(_base_name(core)):]
    if core.kind == "enum":
        items = ", ".join(n if _enum_default(core, i, v) else f"{n} = {v}"
                          for i, (n, v) in enumerate(core.members))
        return [f"{head}{{{items}}}{rest}"]
    pad = " " * (indent + 4)
    lines = [head + "{"]
    for m in core.members:
        mt = m.type
        if not m.name and mt.strip().kind in ("struct", "union"):
            sub = _expand(mt, "", indent + 4)
            lines.append(pad + sub[0])
            lines.extend(sub[1:-1])
            lines.append(" " * (indent + 4) + sub[-1] + ";")
            continue
        sub = _expand(mt, m.name, indent + 4) if mt.kind in ("struct", "union") or (
            mt.kind in ("ptr", "array") and _anonymous_core(mt)) else [declarator(mt, m.name)]
        bits = f" : {m.bit_size}" if m.bit_size else ""
        lines.append(pad + sub[0])
        lines.extend(sub[1:])
        lines[-1] += bits + ";"
    lines.append(" " * indent + "}" + rest)
    return lines


def _anonymous_core(t: DType) -> bool:
    while t.kind in ("ptr", "array", "const", "volatile") and t.target is not None:
        t = t.target
    return t.kind in ("struct", "union", "enum") and not t.name


def _enum_default(t, i, v) -> bool:
    prev = t.members[i - 1][1] if i else -1
    return v == prev + 1


# --- values ---

def int_of(t: DType, data: bytes) -> int:
    v = int.from_bytes(data[:t.byte_size], "little")
    n = 8 * len(data[:t.byte_size])
    if t.signed and n and v >> (n - 1):
        v -= 1 << n
    return v


def char_text(v: int) -> str:
    """gdb's char: `65 'A'`, `0 '\\000'`."""
    from kvmdbg.debug.present.values import char_repr
    return f"{v} '{char_repr(v & 0xFF)}'"


def char_array(raw: bytes) -> str:
    """gdb's printstr for a char array: one trailing NUL dropped, runs of more than
    REPEAT_THRESHOLD equal characters as `'c' <repeats N times>`, the rest quoted."""
    from kvmdbg.debug.present.values import c_string, char_repr
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw:
        return '""'
    parts, text, i, shown = [], "", 0, 0
    while i < len(raw) and shown < PRINT_ELEMENTS:
        j = i
        while j < len(raw) and raw[j] == raw[i]:
            j += 1
        if j - i > REPEAT_THRESHOLD:
            if text:
                parts.append(c_string(text))
                text = ""
            parts.append(f"'{char_repr(raw[i])}' <repeats {j - i} times>")
            shown += REPEAT_THRESHOLD
            i = j
        else:
            text += chr(raw[i])
            shown += 1
            i += 1
    if text:
        parts.append(c_string(text))
    return ", ".join(parts) + ("..." if i < len(raw) else "")


class Formatter:
    """Values as gdb prints them. symbolize(addr) -> '<sym>' or ''; read(addr, n) -> bytes
    (for char * strings; may raise)."""

    def __init__(self, symbolize, read):
        self.symbolize = symbolize
        self.read = read

    def value(self, t: DType, data: bytes, top: bool = True, missing=frozenset()) -> str:
        """missing: byte offsets the value does not have (pieces of a DWARF location
        that are empty): what lies in them is `<optimized out>`."""
        s = t.strip()
        k = s.kind
        if missing and set(range(len(data[:max(t.byte_size, 1)]))) <= missing:
            return "<optimized out>"
        if k == "base":
            if s.encoding == ATE_BOOLEAN:
                v = int_of(s, data)
                return "true" if v == 1 else "false" if v == 0 else str(v)
            if s.encoding == ATE_FLOAT:
                import struct
                if s.size in (4, 8):
                    return repr(struct.unpack("<f" if s.size == 4 else "<d", data[:s.size])[0])
                return "<unsupported float>"
            v = int_of(s, data)
            return char_text(v) if s.is_char() else str(v)
        if k == "enum":
            v = int_of(s, data)
            for n, x in s.members:
                if x == v:
                    return n
            return str(v)
        if k == "ptr":
            addr = int.from_bytes(data[:8], "little")
            return self.pointer(t, addr, top)
        if k in ("struct", "union"):
            parts = []
            for m in s.members:
                chunk = data[m.offset:m.offset + max(m.type.byte_size, 1)]
                if m.bit_size:
                    raw = int.from_bytes(chunk, "little") >> m.bit_offset
                    raw &= (1 << m.bit_size) - 1
                    if m.type.signed and raw >> (m.bit_size - 1):
                        raw -= 1 << m.bit_size
                    text = str(raw)
                else:
                    inner = frozenset(b - m.offset for b in missing
                                      if m.offset <= b < m.offset + len(chunk))
                    text = self.value(m.type, chunk, top=False, missing=inner)
                parts.append(f"{m.name} = {text}" if m.name else text)
            return "{" + ", ".join(parts) + "}"
        if k == "array":
            return self.array(s, data)
        if k == "func":
            return "{" + name(t) + "}"
        return "void"

    def pointer(self, t: DType, addr: int, top: bool) -> str:
        target = t.strip().target
        sym = self.symbolize(addr)
        text = f"{addr:#x}" + (f" {sym}" if sym else "")
        if target is not None and target.strip().kind == "func":
            return f"{{{name(target)}}} {text}" if top else text
        if target is not None and target.is_char() and addr:
            return f"{text} {self._string(addr)}"
        return f"({name(t)}) {text}" if top else text

    def _string(self, addr: int) -> str:
        from kvmdbg.debug.present.values import c_string
        out = b""
        try:
            while len(out) < PRINT_ELEMENTS:
                b = self.read(addr + len(out), 1)
                if b == b"\0":
                    break
                out += b
        except Exception:               # noqa: BLE001 - gdb: <error: Cannot access memory ...>
            return f"<error: Cannot access memory at address {addr + len(out):#x}>"
        text = c_string(out.decode("latin-1"))
        return text + ("..." if len(out) >= PRINT_ELEMENTS else "")

    def array(self, t: DType, data: bytes) -> str:
        el = t.target
        size = el.byte_size if el is not None else 0
        if not size or t.count is None:
            return "{}" if t.count == 0 else "0x0"
        items = [self.value(el, data[i * size:(i + 1) * size], top=False)
                 for i in range(min(t.count, PRINT_ELEMENTS))]
        if el.is_char() and size == 1:
            return char_array(data[:t.count])
        out, i = [], 0
        while i < len(items):
            j = i
            while j < len(items) and items[j] == items[i]:
                j += 1
            if j - i >= REPEAT_THRESHOLD:
                out.append(f"{items[i]} <repeats {j - i} times>")
            else:
                out.extend(items[i:j])
            i = j
        return "{" + ", ".join(out) + ("..." if t.count > PRINT_ELEMENTS else "") + "}"
