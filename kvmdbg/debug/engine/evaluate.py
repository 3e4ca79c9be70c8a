"""Give expression trees (expr.py) values against a Session, and carry out assignments.

Values are (int | str | dict | None, Type). Arithmetic is 64-bit: the result is
unsigned if either side is u64, otherwise signed, wrapped to 64 bits as the guest's
registers are. Registers have gdb's types (rax is int64, eax int32, rip a code
pointer, eflags/cr0/cr4/efer flag words), so `print $eflags` shows `[ IF ZF ]`.

Writing a control register (`set $cr4.smep = 0`, `set $cr4 = ...`, `set $efer.nxe = 1`)
goes through the vCPU's CR path (cpu.ops.set_cr / set_efer), the way a guest MOV to
CR4 would reach KVM, so the MMU model reacts to it; a value the CPU refuses is an
error, not a silent write.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmdbg.bits import M64, sign_extend
from kvmdbg.cpu.faults import GuestFault
from kvmdbg.cpu.regs import CR0_BITS, CR4_BITS, EFER_BITS, RFLAGS_BITS, SUBREGS
from kvmdbg.debug.engine.expr import (S8, S16, S32, S64, STR, STRUCT, U32, U64, VOID, AddrOf, Assign,
                               Binary, Cast, Deref, Dollar, ExprError, Field, Num, SizeOf, Space,
                               Str, Symbol, Type, Unary, parse)

PTR = Type("void *", 8, False, "ptr", VOID)          # $rsp, $rbp, $cr2: arithmetic in bytes
CODE = Type("code *", 8, False, "code", U64)          # $pc and symbols: shown as <sym+off>
TEXT = Type("<text variable, no debug info>", 1, False, "text")
TEXT_PTR = Type("<text variable, no debug info> *", 8, False, "ptr", TEXT)   # &flip
FLAGS_RFLAGS = Type("i386_eflags", 8, False, "flags", bits=RFLAGS_BITS)
FLAGS_CR0 = Type("i386_cr0", 8, False, "flags", bits=CR0_BITS)
FLAGS_CR4 = Type("i386_cr4", 8, False, "flags", bits=CR4_BITS)
FLAGS_EFER = Type("i386_efer", 8, False, "flags", bits=EFER_BITS)
CR3_TYPE = Type("i386_cr3", 8, False, "cr3")

REGISTER_ALIASES = {"pc": "rip", "sp": "rsp", "fp": "rbp", "rflags": "eflags"}
CR_REGISTERS = {"cr0": 0, "cr3": 3, "cr4": 4, "cr8": 8}


def _bit_fields(bits) -> dict:
    return {name.lower(): (shift, 1) for name, shift in bits}


# Bit fields addressable as $REG.FIELD (names from cpu/regs.py, lower case).
REGISTER_FIELDS = {
    "cr0": _bit_fields(CR0_BITS),
    "cr4": _bit_fields(CR4_BITS),
    "efer": _bit_fields(EFER_BITS) | {"nx": (11, 1)},
    "eflags": _bit_fields(RFLAGS_BITS) | {"iopl": (12, 2)},
    "cr3": {"pcid": (0, 12), "pwt": (3, 1), "pcd": (4, 1), "pdbr": (12, 40)},
}


def register_type(name: str) -> Type:
    if name in SUBREGS:
        size = SUBREGS[name][1]
        if name in ("rsp", "rbp"):
            return PTR
        return {1: S8, 2: S16, 4: S32, 8: S64}[size]
    return {"rip": CODE, "eflags": FLAGS_RFLAGS, "cr0": FLAGS_CR0, "cr4": FLAGS_CR4,
            "efer": FLAGS_EFER, "cr3": CR3_TYPE, "cr2": PTR, "cr8": S64, "pkru": U32,
            "fs_base": S64, "gs_base": S64, "k_gs_base": S64, "pat": U64,
            "tsc_aux": U32}.get(name, S32)


@dataclass
class LValue:
    kind: str                    # reg, field, mem, conv
    name: str = ""               # register or variable name
    vcpu: int = 0
    space: str = "gva"
    address: int = 0
    size: int = 8
    shift: int = 0
    width: int = 0


@dataclass
class Value:
    v: object
    type: Type
    lval: LValue | None = None
    space: str = ""              # set when the value is an address written with gva:/gpa:/hpa:

    def as_int(self) -> int:
        if isinstance(self.v, bool):
            return int(self.v)
        if not isinstance(self.v, int):
            what = "void" if self.v is None else "a string" if isinstance(self.v, str) else "a structure"
            raise ExprError(f"Argument to arithmetic operation not a number or boolean ({what}).")
        return self.v

    def truthy(self) -> bool:
        if isinstance(self.v, str):
            return bool(self.v)
        return self.as_int() != 0


def make_int(v: int, t: Type) -> Value:
    """Wrap v to t's width and signedness."""
    if t.size:
        bits = 8 * t.size
        v &= (1 << bits) - 1
        if t.signed:
            v = sign_extend(v, bits)
    return Value(v, t)


class Evaluator:
    """Values of expression trees. Evaluation keeps its own stack (each inner node is a
    generator that yields the operands it needs), so a tree 10,000 deep or a sum of
    10,000 terms costs memory in proportion, never Python recursion."""

    def __init__(self, session, vcpu: int | None = None, event=None, effects: bool = True):
        self.s = session
        self.vcpu = session.current if vcpu is None else vcpu
        self.event = event          # the event a catchpoint condition is tested on
        self.effects = effects      # False under sizeof: no memory read, no assignment
        self.shadowed_noted: set = set()    # gfns a write note was given for (assign)

    # --- entry points ---

    def value(self, node) -> Value:
        leaf = _LEAVES.get(type(node))
        if leaf is not None:
            return leaf(self, node)
        effects = self.effects
        try:
            return self._run(node)
        finally:
            self.effects = effects

    def _run(self, node) -> Value:
        stack = [_INNER[type(node)](self, node)]
        sent = None
        while True:
            try:
                child = stack[-1].send(sent)
            except StopIteration as done:
                stack.pop()
                sent = done.value
                if not stack:
                    return sent
                continue
            leaf = _LEAVES.get(type(child))
            if leaf is not None:
                sent = leaf(self, child)
            else:
                stack.append(_INNER[type(child)](self, child))
                sent = None

    # --- leaves ---

    def _num(self, n: Num) -> Value:
        return Value(n.value, n.type)

    def _str(self, n: Str) -> Value:
        return Value(n.value, STR)

    def _symbol(self, n: Symbol) -> Value:
        from kvmdbg.debug.engine.stack import lookup_variable
        head, *fields = n.name.split(".")
        var = lookup_variable(self.s, head) if self.effects else None
        if var is not None:
            for name in fields:
                var = member(var, name)
            return var
        syms = self.s.symbols
        if n.name in syms:
            return Value(syms[n.name], CODE)
        raise ExprError(f'No symbol "{n.name}" in current context.')

    def _sizeof_type(self, n: SizeOf) -> Value:
        return Value(n.type.size if n.type.kind != "ptr" else 8, U64)

    def _dollar(self, n: Dollar) -> Value:
        name = n.name
        s = self.s
        if name == "" or name[0] == "$" or name.isdigit():
            return s.history.lookup(name)
        reg = REGISTER_ALIASES.get(name, name)
        regs = s.vcpu(self.vcpu).regs
        if reg in regs and self.vcpu == s.current:
            framed = _frame_register(s, reg)
            if framed is not None:
                return framed
        if reg in regs:
            t = register_type(reg)
            v = make_int(regs[reg], t) if t.kind == "int" else Value(regs[reg], t)
            v.lval = LValue("reg", reg, self.vcpu)
            return v
        return self._convenience(name)

    def _convenience(self, name: str) -> Value:
        s = self.s
        readonly = LValue("conv", name)
        if name == "_event":
            ev = self.event if self.event is not None else s.last_event
            if ev is None:
                return Value(None, VOID, readonly)
            return Value(ev, STRUCT, readonly)
        if name == "_step":
            return Value(s.vcpu(self.vcpu).cpu.steps, S64, readonly)
        if name == "_vcpu":
            return Value(self.vcpu, S64, readonly)
        if name in s.convenience:
            v = s.convenience[name]
            return Value(v.v, v.type, LValue("conv", name), v.space)
        return Value(None, VOID, LValue("conv", name))

    # --- inner nodes: generators that yield their operands ---

    def _space(self, n: Space):
        v = yield n.operand
        return Value(v.as_int() & M64, U64, space=n.space)

    def _sizeof(self, n: SizeOf):
        if n.operand is None:
            return self._sizeof_type(n)
        if isinstance(n.operand, Symbol):           # gdb: a text variable is 1 byte
            self._symbol(n.operand)
            return Value(TEXT.size, U64)
        effects, self.effects = self.effects, False
        v = yield n.operand
        self.effects = effects
        t = v.type
        if t.kind == "str":
            size = len(v.v) + 1 if isinstance(v.v, str) else 1
        elif t.kind == "void":
            size = 1                                # gdb's sizeof(void)
        elif t.kind == "struct":
            raise ExprError("sizeof of an event is not defined (it is not in memory).")
        else:
            size = t.size
        return Value(size, U64)

    def _addrof(self, n: AddrOf):
        if isinstance(n.operand, Symbol):
            v = self._symbol(n.operand)
            if v.type is CODE:                          # an ELF symbol: &flip
                return Value(v.v, TEXT_PTR)
        else:
            v = yield n.operand
        lv = v.lval
        if isinstance(n.operand, Deref) and v.type is CODE:   # &*&flip
            return Value(v.v, TEXT_PTR)
        if lv is None or lv.kind != "mem":
            raise ExprError("Attempt to take address of value not located in memory.")
        if v.type.dtype is not None:                    # &at: a pointer to its DWARF type
            from kvmdbg.debug.engine.stack import ProgramTypes
            t = ProgramTypes.pointer(v.type)
        else:
            t = v.type.pointer()
        return Value(lv.address, t, space="" if lv.space == "gva" else lv.space)

    def _field(self, n: Field):
        base = yield n.operand
        if base.type.kind == "aggregate":
            return member(base, n.name)
        if base.type is STRUCT:
            ev = base.v
            if n.name in ("seq", "name", "vcpu", "step"):
                got = getattr(ev, n.name)
            elif n.name in ev.fields:
                got = ev.fields[n.name]
            else:
                raise ExprError(f"There is no member named {n.name}.")
            if isinstance(got, bool):
                return Value(int(got), S32)
            if isinstance(got, int):
                return Value(got, U64 if got >= 1 << 63 else S64)
            return Value(str(got), STR)
        if base.v is None:
            if isinstance(n.operand, Dollar) and n.operand.name == "_event":
                raise ExprError("$_event is void: no catchpoint has stopped the program yet.")
            raise ExprError("Attempt to extract a component of a value that is not a structure.")
        lv = base.lval
        if lv is None or lv.kind != "reg" or lv.name not in REGISTER_FIELDS:
            raise ExprError("Attempt to extract a component of a value that is not a structure.")
        fields = REGISTER_FIELDS[lv.name]
        if n.name.lower() not in fields:
            raise ExprError(f"There is no member named {n.name} in ${lv.name} "
                            f"(try: {' '.join(sorted(fields))}).")
        shift, width = fields[n.name.lower()]
        v = (base.as_int() >> shift) & ((1 << width) - 1)
        return Value(v, S64, LValue("field", lv.name, lv.vcpu, shift=shift, width=width))

    def _unary(self, n: Unary):
        v = yield n.operand
        if n.op == "!":
            return Value(0 if v.truthy() else 1, S32)
        if v.type.kind in ("ptr", "code") and n.op != "+":
            raise ExprError("Argument to arithmetic operation not a number or boolean.")
        x = v.as_int()
        t = v.type if v.type.kind == "int" and v.type.size == 8 else S64
        if n.op == "-":
            return make_int(-x, t)
        if n.op == "~":
            return make_int(~x, t)
        return make_int(x, t)

    def _cast(self, n: Cast):
        v = yield n.operand
        if n.type.kind == "ptr":
            return Value(v.as_int() & M64, n.type, space=v.space)
        return make_int(v.as_int(), n.type)

    def _deref(self, n: Deref):
        v = yield n.operand
        if n.type is not None:
            t = n.type
        elif v.type.kind == "ptr" and v.type.pointee is not None:
            t = v.type.pointee
            if t.kind == "void":
                raise ExprError("Attempt to dereference a generic pointer.")
            if t is TEXT:                               # *&flip is flip
                return Value(v.as_int() & M64, CODE)
        else:
            t = U64
        if t.kind == "dfunc":                           # *fnptr is the function
            return Value(v.as_int() & M64, CODE)
        if t.kind == "ptr" and t.dtype is None:
            t = Type(t.name, 8, False, "ptr", t.pointee)
        space = v.space or "gva"
        addr = v.as_int() & M64
        if t.kind == "aggregate":
            data = self.s.read_memory(addr, t.size, space) if self.effects else bytes(t.size)
            out = Value(data, t)
            out.lval = LValue("mem", vcpu=self.vcpu, space=space, address=addr, size=t.size)
            return out
        if not self.effects:
            raw = 0
        else:
            raw = int.from_bytes(self.s.read_memory(addr, t.size, space), "little")
        out = make_int(raw, t) if t.kind in ("int", "char") else Value(raw, t)
        out.lval = LValue("mem", vcpu=self.vcpu, space=space, address=addr, size=t.size)
        return out

    def _binary(self, n: Binary):
        op = n.op
        if op in ("&&", "||"):
            left = (yield n.left).truthy()
            if op == "&&" and not left:
                return Value(0, S32)
            if op == "||" and left:
                return Value(1, S32)
            return Value(1 if (yield n.right).truthy() else 0, S32)
        a = yield n.left
        b = yield n.right
        if op in ("==", "!=") and (isinstance(a.v, str) or isinstance(b.v, str)):
            if not (isinstance(a.v, str) and isinstance(b.v, str)):
                raise ExprError("Cannot compare a string with a number.")
            return Value(int((a.v == b.v) == (op == "==")), S32)
        x, y = a.as_int(), b.as_int()
        pa, pb = a.type.kind in ("ptr", "code"), b.type.kind in ("ptr", "code")
        if pa or pb:
            if op in ("==", "!=", "<", "<=", ">", ">="):
                x, y = x & M64, y & M64
            elif op == "-" and pa and pb:
                if a.type != b.type:
                    raise ExprError("First argument of `-' is a pointer and second argument is "
                                    "neither an integer nor a pointer of the same type.")
                d, step = sign_extend((x - y) & M64, 64), _step(a.type)
                return Value(d // step if d >= 0 else -(-d // step), S64)
            elif op == "+" or (op == "-" and pa):
                p, k = (a, y) if pa else (b, x)
                addr = p.v + k * _step(p.type) if op == "+" else p.v - k * _step(p.type)
                return Value(addr & M64, p.type, space=p.space)
            else:
                raise ExprError("Argument to arithmetic operation not a number or boolean.")
        t = U64 if (a.type.size == 8 and not a.type.signed and a.type.kind == "int") or \
            (b.type.size == 8 and not b.type.signed and b.type.kind == "int") else S64
        x, y = make_int(x, t).v, make_int(y, t).v
        if op == "+":
            r = x + y
        elif op == "-":
            r = x - y
        elif op == "*":
            r = x * y
        elif op in ("/", "%"):
            if y == 0:
                if not self.effects:
                    return Value(0, t)
                raise ExprError("Division by zero")
            q = abs(x) // abs(y)
            if (x < 0) != (y < 0):
                q = -q
            r = q if op == "/" else x - q * y
        elif op == "&":
            r = x & y
        elif op == "|":
            r = x | y
        elif op == "^":
            r = x ^ y
        elif op == "<<":
            r = x << (y & 63) if y >= 0 else 0
        elif op == ">>":
            r = x >> (y & 63) if y >= 0 else 0
        else:
            r = {"==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
            return Value(int(r), S32)
        out = make_int(r, t)
        if a.space and op in ("+", "-"):
            out.space = a.space
        return out

    def _assign(self, n: Assign):
        target = yield n.target
        new = yield n.value
        if not self.effects:
            return Value(target.v, target.type)
        return assign(self.s, target, new, self)


def member(base: Value, name: str) -> Value:
    """A member of a DWARF struct/union value (`at->flags`, `v.arr`)."""
    from kvmdbg.debug.engine.stack import to_type
    if base.type.kind != "aggregate":
        raise ExprError("Attempt to extract a component of a value that is not a structure.")
    m = base.type.dtype.member(name)
    if m is None:
        raise ExprError(f"There is no member named {name}.")
    t = to_type(m.type)
    size = max(m.type.byte_size, 1)
    data = base.v[m.offset:m.offset + size]
    missing = getattr(base, "missing", frozenset())
    if any(m.offset <= b < m.offset + size for b in missing):       # an empty DWARF piece
        return Value("<optimized out>", Type(t.name, 0, False, "error", dtype=m.type))
    lv = base.lval
    if t.kind == "aggregate":
        out = Value(data, t)
    else:
        raw = int.from_bytes(data, "little")
        if m.bit_size:
            raw = (raw >> m.bit_offset) & ((1 << m.bit_size) - 1)
            if m.type.signed and raw >> (m.bit_size - 1):
                raw -= 1 << m.bit_size
            return Value(raw, t)
        out = make_int(raw, t) if t.kind in ("int", "char") else Value(raw, t)
    if lv is not None and lv.kind == "mem":
        out.lval = LValue("mem", vcpu=lv.vcpu, space=lv.space, address=lv.address + m.offset,
                          size=size)
    return out


def _frame_register(s, reg: str):
    """A register as the selected frame sees it (gdb: $pc, $sp and the callee-saved
    registers of an outer frame come from the unwinder), or None in frame 0; not an
    lvalue there."""
    from kvmdbg.debug.engine import stack
    if stack.selected_level(s) == 0:
        return None
    frame = stack.selected_frame(s)
    if reg not in frame.regs:
        return None
    t = register_type(reg)
    return make_int(frame.regs[reg], t) if t.kind == "int" else Value(frame.regs[reg], t)


def _step(t: Type) -> int:
    """What one unit of pointer arithmetic is: the pointed-to type's size, 1 for void and code."""
    if t.kind == "ptr" and t.pointee is not None and t.pointee.size:
        return t.pointee.size
    return 1


_LEAVES = {Num: Evaluator._num, Str: Evaluator._str, Symbol: Evaluator._symbol,
           Dollar: Evaluator._dollar}
_INNER = {Space: Evaluator._space, SizeOf: Evaluator._sizeof, AddrOf: Evaluator._addrof,
          Field: Evaluator._field, Unary: Evaluator._unary, Cast: Evaluator._cast,
          Deref: Evaluator._deref, Binary: Evaluator._binary, Assign: Evaluator._assign}


# --- assignment ---

def assign(s, target: Value, new: Value, evaluator=None) -> Value:
    lv = target.lval
    if lv is None:
        raise ExprError("Left operand of assignment is not an lvalue.")
    if lv.kind == "conv":
        if lv.name.startswith("_") and lv.name in ("_step", "_event", "_vcpu"):
            raise ExprError(f"${lv.name} is read-only.")
        s.convenience[lv.name] = Value(new.v, new.type, space=new.space)
        return Value(new.v, new.type, space=new.space)
    x = new.as_int()
    if lv.kind == "mem":
        t = target.type
        # Looked up before the write: a gva write translates through the tables it may change.
        shadowed = s.shadowed_page_tables(lv.address, lv.size, lv.space)
        s.write_memory(lv.address, (x & ((1 << (8 * lv.size)) - 1)).to_bytes(lv.size, "little"),
                       lv.space)
        _note_shadowed(s, shadowed, evaluator)
        return make_int(x, t) if t.kind in ("int", "char") else Value(x & M64, t)
    regs = s.vcpu(lv.vcpu).regs
    if lv.kind == "field":
        mask = ((1 << lv.width) - 1) << lv.shift
        x = (regs[lv.name] & ~mask) | ((x << lv.shift) & mask)
        write_register(s, lv.vcpu, lv.name, x)
        return Value((regs[lv.name] >> lv.shift) & ((1 << lv.width) - 1), S64)
    write_register(s, lv.vcpu, lv.name, x)
    t = register_type(lv.name)
    return make_int(regs[lv.name], t) if t.kind == "int" else Value(regs[lv.name], t)


def _note_shadowed(s, gfns: list, evaluator) -> None:
    """One line after a debugger write into guest page tables that KVM shadows (once per
    gfn for one expression). Real KVM would not see such a write either: a VMM's (or a
    gdb stub's) write through its own mapping of guest memory never reaches the page-track
    notifier; only the writes KVM emulates do (kvm_mmu_pte_write, kvm_mmu_track_write
    since v6.7, arch/x86/kvm/mmu/mmu.c)."""
    if evaluator is not None:
        gfns = [g for g in gfns if g not in evaluator.shadowed_noted]
        evaluator.shadowed_noted.update(gfns)
    if len(gfns) == 1:
        s.message(f"gfn {gfns[0]:#x} is a shadowed page table: KVM does not see this write "
                  "until the page is resynced or zapped")
    elif gfns:
        s.message(f"gfns {' and '.join(f'{g:#x}' for g in gfns)} are shadowed page tables: KVM "
                  "does not see this write until the pages are resynced or zapped")


def write_register(s, vcpu: int, name: str, value: int) -> None:
    """A register write; CRs and EFER go through the vCPU's CR path (KVM's view of a MOV).
    The recorded future after this point is discarded (engine/reverse.py)."""
    _write_register(s, vcpu, name, value)
    from kvmdbg.debug.engine import reverse
    reverse.note_change(s)


def _write_register(s, vcpu: int, name: str, value: int) -> None:
    view = s.vcpu(vcpu)
    cpu = view.cpu
    value &= M64
    try:
        if name in CR_REGISTERS:
            cpu.ops.set_cr(cpu, CR_REGISTERS[name], value)
        elif name == "efer":
            cpu.ops.set_efer(cpu, value)
        else:
            view.regs._set(name, value)      # noted once, below
            return
    except GuestFault as f:
        raise ExprError(f"Cannot set ${name} to {value:#x}: the CPU refuses it ({f}).") from None


# --- convenience for commands ---

def evaluate(s, text: str, vcpu: int | None = None, event=None) -> Value:
    from kvmdbg.debug.engine.stack import ProgramTypes
    return Evaluator(s, vcpu, event).value(parse(text, ProgramTypes.of(s)))


def evaluate_node(s, node, vcpu: int | None = None, event=None) -> Value:
    return Evaluator(s, vcpu, event).value(node)


def evaluate_address(s, text: str) -> tuple[int, str]:
    """(address, space) of an address expression: 'gpa:0x7000', '$rsp+8', 'flip'."""
    v = evaluate(s, text)
    return v.as_int() & M64, v.space or "gva"


__all__ = ["Evaluator", "Value", "LValue", "evaluate", "evaluate_node", "evaluate_address",
           "assign", "write_register", "register_type", "REGISTER_FIELDS", "make_int"]
