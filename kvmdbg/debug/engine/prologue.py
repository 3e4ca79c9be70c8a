"""Where `break FUNC` goes: gdb's skip_prologue_sal for x86-64, in the two cases GCC
output meets.

- A unit GCC (4.5 or later) compiled with location lists (optimised code) has
  "valid locations" in gdb's words: the breakpoint is the function's first instruction.
- Otherwise amd64_analyze_prologue: past `push %rbp; mov %rsp,%rbp` (after an endbr64),
  then on to the start of the next line-table row if that left it mid-row; a function
  without that frame setup is broken into at its first instruction.
"""

from __future__ import annotations

import re

from kvmdbg.errors import KvmdbgError

ENDBR64 = bytes.fromhex("f30f1efa")
PUSH_RBP = 0x55
MOV_RSP_RBP = (bytes.fromhex("4889e5"), bytes.fromhex("488bec"))


def _gcc_ge_4_5(producer: str) -> bool:
    m = re.match(r"GNU (?:[^ ]+ )*?(\d+)\.(\d+)", producer)
    if m is None:
        return False
    major, minor = int(m.group(1)), int(m.group(2))
    return major > 4 or major == 4 and minor >= 5


def _has_loclist(cu) -> bool:
    for die in cu.iter_DIEs():
        a = die.attributes.get("DW_AT_location")
        if a is not None and a.form in ("DW_FORM_sec_offset", "DW_FORM_loclistx",
                                        "DW_FORM_data4", "DW_FORM_data8"):
            return True
    return False


def locations_valid(sc, cu) -> bool:
    cache = sc.__dict__.setdefault("_locations_valid", {})
    if cu.cu_offset not in cache:
        p = cu.get_top_DIE().attributes.get("DW_AT_producer")
        producer = p.value.decode(errors="replace") if p is not None and \
            isinstance(p.value, bytes) else str(p.value) if p is not None else ""
        cache[cu.cu_offset] = _gcc_ge_4_5(producer) and _has_loclist(cu)
    return cache[cu.cu_offset]


def skip_prologue(s, start: int, end: int | None) -> int:
    """The address past the frame setup at start (gdb's amd64_skip_prologue and the
    mid-line rule after it)."""
    di = getattr(s, "debug_info", None)
    code = di.file_bytes(start, 8) if di is not None else None
    if code is None:
        try:
            code = s.read_memory(start, 8)
        except KvmdbgError:             # unreadable: break at the start
            return start
    pc = 4 if code.startswith(ENDBR64) else 0
    if code[pc:pc + 1] != bytes([PUSH_RBP]) or code[pc + 1:pc + 4] not in MOV_RSP_RBP:
        return start
    pc = start + pc + 4
    row = di.row_at(pc) if di is not None else None
    if row is not None and row.address != pc and (end is None or row.end < end):
        return row.end
    return pc


def function_breakpoint(s, name: str) -> int | None:
    """gdb's breakpoint address for the function NAME, or None if NAME is not a function."""
    di = getattr(s, "debug_info", None)
    sc = di.scope if di is not None else None
    f = sc.by_name.get(name) if sc is not None else None
    if f is not None:
        if locations_valid(sc, f.cu):
            return f.low
        return skip_prologue(s, f.low, f.high)
    if name in s.symbols and di is not None and di.is_function(name):
        return skip_prologue(s, s.symbols[name], None)
    return None
