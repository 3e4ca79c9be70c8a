"""The session's view of the stack: its frames (CFI first, the stack heuristic after),
the selected frame, and the values of DWARF variables in a frame (what backtrace,
frame/up/down, info frame, info locals/args, finish and `print VAR` share).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kvmdbg.bits import M64
from kvmdbg.debug.engine import dwarf_types as dt
from kvmdbg.debug.engine.dwarf_scope import LocationError, reg_name
from kvmdbg.debug.engine.expr import VOID, ExprError, Type
from kvmdbg.debug.engine.frames import Frame, caller_of, frame0, unwind
from kvmdbg.errors import KvmdbgError

OPTIMIZED_OUT = "<optimized out>"


@dataclass
class Stack:
    frames: list
    note: str = ""                   # why the frames after some level are a heuristic


def debug_info(s):
    return getattr(s, "debug_info", None)


def scope(s):
    di = debug_info(s)
    return di.scope if di is not None else None


def read_u64(s):
    return lambda addr: int.from_bytes(s.read_memory(addr, 8), "little")


def stack(s, limit: int = 256) -> Stack:
    """The frames of the current vCPU, innermost first: by CFI as far as it reaches, then
    (from the first frame no CFI covers) return addresses found on the stack."""
    di = debug_info(s)
    cfi = di.cfi if di is not None else None
    if not cfi:
        return Stack(_heuristic(s, frame0(s.cpu), limit, 0))
    frames = unwind(s.cpu, cfi, read_u64(s), limit)
    last = frames[-1]
    note = ""
    if last.rule is None and len(frames) < limit:
        more = _heuristic(s, last, limit - len(frames) + 1, last.level)[1:]
        if more:
            note = (f"(no call-frame information at {last.pc:#x}: frames after "
                    f"{function_name(s, last)} are return addresses found on the stack)")
        frames += more
    return Stack(_with_inlined(s, frames), note)


def _with_inlined(s, frames: list) -> list:
    """gdb's inline frames: a machine frame whose PC is in inlined code becomes one frame
    per inlined call (innermost first, at the PC's line) and then its function's frame
    (at the call site's line); the levels are renumbered."""
    sc = scope(s)
    if sc is None:
        return frames
    out = []
    for f in frames:
        fn = sc.function_at(f.lookup_pc)
        chain = sc.inline_chain(fn, f.lookup_pc) if fn is not None else []
        funcs = list(reversed(chain)) + ([fn] if fn is not None else [None])
        for i, func in enumerate(funcs):
            g = replace(f, level=len(out), function=func,
                        call_site=sc.call_site(funcs[i - 1]) if i else None)
            out.append(g)
    return out


def return_addresses(s, rsp: int, limit: int, span: int = 0x2000) -> list:
    """(address, stack slot) of each word from rsp up that follows a CALL instruction
    (the stack heuristic), at most limit."""
    out = []
    for off in range(0, span, 8):
        if len(out) >= limit:
            break
        try:
            word = int.from_bytes(s.read_memory(rsp + off, 8), "little")
        except KvmdbgError:
            break
        if word and _follows_call(s, word):
            out.append((word, (rsp + off) & M64))
    return out


def _follows_call(s, ret: int) -> bool:
    for length in (5, 2, 3, 6, 7):
        try:
            code = s.read_memory(ret - length, length)
        except KvmdbgError:
            continue
        got = list(s.cpu.decoder.disasm(code, ret - length, 1, s.cpu.code_bits))
        if got and got[0][1] == length and got[0][2] == "call":
            return True
    return False


def _heuristic(s, start: Frame, limit: int, level: int) -> list:
    out = [start]
    for ret, slot in return_addresses(s, start.regs.get("rsp", s.cpu.r[4]), limit - 1):
        regs = dict(start.regs, rip=ret, rsp=(slot + 8) & M64)
        out.append(Frame(level + len(out), ret, regs, heuristic=True))
    return out


def caller_return(s):
    """(return address, stack pointer after the return) of the current machine frame, by
    its CFI; None without CFI (until/advance then stop only at their place)."""
    di = debug_info(s)
    if di is None or not di.cfi:
        return None
    frames = unwind(s.cpu, di.cfi, read_u64(s), 2)
    if len(frames) < 2:
        return None
    return frames[1].pc, frames[0].cfa


# --- the selected frame (gdb's `frame N`); back to #0 at every stop ---

def _stop_key(s):
    cpu = s.cpu
    return (s.current, cpu.steps, cpu.rip)


def selected_level(s) -> int:
    key, level = getattr(s.state, "selected_frame", (None, 0))
    return level if key == _stop_key(s) else 0


def select(s, level: int) -> None:
    s.state.selected_frame = (_stop_key(s), level)


def selected_frame(s) -> Frame:
    frames = stack(s, selected_level(s) + 1).frames
    return frames[min(selected_level(s), len(frames) - 1)]


# --- functions and frame lines ---

def function_of(s, frame: Frame):
    if frame.function is not None:
        return frame.function
    sc = scope(s)
    return sc.function_at(frame.lookup_pc) if sc is not None else None


def frame_place(s, frame: Frame):
    """(file, line) a frame is at: its call site for the caller of inlined code, else the
    line-table row of its PC; None without line information."""
    if frame.call_site is not None:
        return frame.call_site
    di = debug_info(s)
    row = di.row_at(frame.lookup_pc) if di is not None else None
    return (row.file, row.line) if row is not None else None


def function_name(s, frame: Frame) -> str:
    f = function_of(s, frame)
    if f is not None:
        return f.name
    sym = s.symbols.lookup(frame.lookup_pc)
    return sym[1:-1].split("+")[0] if sym else "??"


def frame_line(s, frame: Frame, print_level: bool = True) -> str:
    """gdb's print_frame: `#1  0x0000000000401234 in ac_test_run (at=0x...) at x86/access.c:1301`;
    the address only where the PC is not the start of a line-table row (frame 0)."""
    di = debug_info(s)
    row = di.row_at(frame.lookup_pc) if di is not None else None
    f = function_of(s, frame)
    head = f"#{frame.level:<3}" if print_level else ""
    if frame.call_site is not None:             # gdb: no address for the caller of inlined code
        show_addr = False
    else:
        show_addr = not frame.innermost and not frame.heuristic or row is None or \
            row.address != frame.pc
    width = 16 if s.cpu.code_bits == 64 else 8
    addr = f"0x{frame.pc:0{width}x} in " if show_addr else ""
    args = ", ".join(f"{v.name}={frame_arg_text(s, frame, v)}" for v in f.arguments()) \
        if f is not None else ""
    place = frame_place(s, frame)
    where = f" at {place[0]}:{place[1]}" if place is not None else ""
    return f"{head}{addr}{function_name(s, frame)} ({args}){where}"


def frame_arg_text(s, frame: Frame, var) -> str:
    """An argument as a frame line shows it: scalars by value, aggregates as `...`."""
    if var.type.strip().kind in ("struct", "union", "array"):
        return "..."
    v = variable_value(s, frame, var)
    if v.type.kind == "error":
        return v.v
    return value_text(s, v, top=False)


# --- DWARF values as expression values ---

def to_type(t: dt.DType) -> Type:
    """The expression language's Type for a DWARF type (carrying it as .dtype)."""
    core = t.strip()
    n = dt.name(t)
    k = core.kind
    if k in ("base", "enum"):
        kind = "char" if core.is_char() else "int"
        return Type(n, core.byte_size, core.signed, kind, dtype=t)
    if k == "ptr":
        target = core.target
        if target is None or target.strip().kind == "void":
            pointee = VOID
        elif target.strip().kind == "func":
            pointee = Type(dt.name(target), 1, False, "dfunc", dtype=target)
        else:
            pointee = to_type(target)
        return Type(n, 8, False, "ptr", pointee, dtype=t)
    if k in ("struct", "union", "array"):
        return Type(n, core.byte_size, False, "aggregate", dtype=t)
    if k == "func":
        return Type(n, 1, False, "dfunc", dtype=t)
    return VOID


class ProgramTypes:
    """The program's DWARF type names for the expression parser (casts, sizeof)."""

    def __init__(self, sc):
        self.sc = sc

    @classmethod
    def of(cls, s):
        sc = scope(s)
        return cls(sc) if sc is not None else None

    def __call__(self, name: str):
        t = self.sc.type_named(name)
        return to_type(t) if t is not None else None

    @staticmethod
    def pointer(t: Type) -> Type:
        return to_type(dt.DType("ptr", "", 8, _target=t.dtype))


def value_text(s, val, top: bool = True) -> str:
    """A DWARF-typed value as gdb prints it."""
    t = val.type.dtype
    data = val.v if isinstance(val.v, bytes) else \
        (val.v & ((1 << (8 * max(val.type.size, 1))) - 1)).to_bytes(max(val.type.size, 1), "little")
    return formatter(s).value(t, data, top, getattr(val, "missing", frozenset()))


def formatter(s) -> dt.Formatter:
    di = debug_info(s)

    def symbolize(addr: int) -> str:
        if di is not None and not di.in_section(addr):
            return ""
        return s.symbols.lookup(addr, max_offset=0) if addr else ""
    return dt.Formatter(symbolize, lambda a, n: s.read_memory(a, n))


def variable_value(s, frame: Frame, var):
    """The value of a DWARF variable in a frame, or `<optimized out>` (an 'error' value)."""
    from kvmdbg.debug.engine.evaluate import LValue, Value, make_int
    t = to_type(var.type)
    size = var.type.byte_size
    try:
        where = locate(s, frame, var)
    except LocationError:           # the type stays known (whatis, ptype)
        return Value(OPTIMIZED_OUT, Type(t.name, 0, False, "error", dtype=var.type))
    kind, x = where
    if kind == "bytes":
        x, missing = x
        x = x.ljust(size, b"\0")[:size]
        if missing and (t.kind != "aggregate" or len(missing) >= size):
            return Value(OPTIMIZED_OUT, Type(t.name, 0, False, "error", dtype=var.type))
        if t.kind == "aggregate":
            v = Value(x, t)
            v.missing = missing
            return v
        raw = int.from_bytes(x, "little")
        return make_int(raw, t) if t.kind in ("int", "char") else Value(raw, t)
    if kind == "value":
        return make_int(x, t) if t.kind in ("int", "char") else Value(x & M64, t)
    if kind == "reg":
        raw = frame.regs[x] & ((1 << (8 * min(size, 8))) - 1)
        v = make_int(raw, t) if t.kind in ("int", "char") else \
            Value(raw.to_bytes(8, "little")[:size], t) if t.kind == "aggregate" else Value(raw, t)
        if frame.level == 0 and x in frame.regs:
            v.lval = LValue("reg", x, s.current) if size == 8 else None
        return v
    try:
        data = s.read_memory(x, size)
    except KvmdbgError:
        raise ExprError(f"Cannot access memory at address {x:#x}") from None
    if t.kind == "aggregate":
        v = Value(data, t)
    else:
        raw = int.from_bytes(data, "little")
        v = make_int(raw, t) if t.kind in ("int", "char") else Value(raw, t)
    v.lval = LValue("mem", vcpu=s.current, space="gva", address=x, size=size)
    return v


def locate(s, frame: Frame, var):
    """('reg', name) | ('addr', address) | ('value', int); LocationError if not simple."""
    kind, ops = var.location(frame.lookup_pc)
    if kind == "extern":
        return "addr", ops
    if kind == "const":
        if isinstance(ops, int):
            return "value", ops
        raise LocationError("a constant block")
    if kind != "expr" or not ops:
        raise LocationError("optimized out")
    if any(op.op_name == "DW_OP_piece" for op in ops):
        return "bytes", _pieces(s, frame, var, ops)
    return _eval_ops(s, frame, var, ops)


def _pieces(s, frame: Frame, var, ops):
    """(bytes, missing byte offsets) of a composite location (DW_OP_piece): each piece
    from its register, memory or constant; an empty piece is bytes the value does not
    have (a member lying in them prints `<optimized out>`, as gdb prints it)."""
    data, part, missing = b"", [], set()
    for op in ops:
        if op.op_name != "DW_OP_piece":
            part.append(op)
            continue
        size = op.args[0]
        if not part:
            missing.update(range(len(data), len(data) + size))
            data += bytes(size)
            continue
        kind, x = _eval_ops(s, frame, var, part)
        if kind == "reg":
            data += (frame.regs[x] & M64).to_bytes(8, "little")[:size].ljust(size, b"\0")
        elif kind == "value":
            data += (x & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        else:
            try:
                data += s.read_memory(x, size)
            except KvmdbgError:
                raise LocationError("unreadable piece") from None
        part = []
    if part:
        raise LocationError("a location after the last piece")
    return data, frozenset(missing)


def _eval_ops(s, frame: Frame, var, ops):
    stack: list = []
    for i, op in enumerate(ops):
        n = op.op_name
        if n.startswith("DW_OP_reg") and len(ops) == 1:
            num = op.args[0] if n == "DW_OP_regx" else int(n[9:])
            name = reg_name(num)
            if name not in frame.regs:
                raise LocationError(f"register {name}")
            return "reg", name
        if n == "DW_OP_addr":
            stack.append(op.args[0])
        elif n.startswith("DW_OP_breg"):
            num = op.args[0] if n == "DW_OP_bregx" else int(n[10:])
            off = op.args[-1]
            name = reg_name(num)
            if name not in frame.regs:
                raise LocationError(f"register {name}")
            stack.append((frame.regs[name] + off) & M64)
        elif n == "DW_OP_fbreg":
            stack.append((frame_base(s, frame, var) + op.args[0]) & M64)
        elif n == "DW_OP_call_frame_cfa":
            stack.append(cfa_of(s, frame))
        elif n.startswith("DW_OP_lit"):
            stack.append(int(n[9:]))
        elif n.startswith("DW_OP_const") and op.args:
            stack.append(op.args[0])
        elif n == "DW_OP_plus_uconst" and stack:
            stack[-1] = (stack[-1] + op.args[0]) & M64
        elif n == "DW_OP_stack_value" and i == len(ops) - 1 and stack:
            return "value", stack[-1]
        else:
            raise LocationError(n)
    if len(stack) != 1:
        raise LocationError("stack")
    return "addr", stack[0]


def cfa_of(s, frame: Frame) -> int:
    if frame.cfa is None:
        di = debug_info(s)
        if di is None or not di.cfi:
            raise LocationError("no CFA")
        caller_of(frame, di.cfi, read_u64(s))
        if frame.cfa is None:
            raise LocationError("no CFA")
    return frame.cfa


def frame_base(s, frame: Frame, var) -> int:
    f = var.db.function_at(frame.lookup_pc)
    ops = f.frame_base_ops() if f is not None else None
    if not ops:
        raise LocationError("no frame base")
    kind, x = _eval_ops(s, frame, var, ops)
    if kind == "reg":
        return frame.regs[x]
    return x


def return_value(s, t: dt.DType):
    """A function's return value by the System V ABI: RAX for scalars and pointers up to
    8 bytes (None for what kvmdbg does not reconstruct: floats, aggregates)."""
    from kvmdbg.debug.engine.evaluate import Value, make_int
    core = t.strip()
    if core.kind not in ("base", "enum", "ptr") or core.byte_size > 8 or \
            core.kind == "base" and core.encoding == dt.ATE_FLOAT:
        return None
    et = to_type(t)
    raw = s.cpu.r[0] & ((1 << (8 * core.byte_size)) - 1)
    return make_int(raw, et) if et.kind in ("int", "char") else Value(raw, et)


def lookup_variable(s, name: str):
    """The Value of NAME in the selected frame (its blocks, then its function), else a
    global; None if DWARF has no such variable."""
    sc = scope(s)
    if sc is None:
        return None
    frame = selected_frame(s)
    f = function_of(s, frame)
    if f is not None:
        for v in f.variables(frame.lookup_pc, nested=True):
            if v.name == name:
                return variable_value(s, frame, v)
    g = sc.globals.get(name)
    if g is not None:
        return variable_value(s, frame, g)
    return None


__all__ = ["stack", "selected_frame", "select", "frame_line", "variable_value", "lookup_variable",
           "to_type", "value_text", "frame0", "return_value"]
