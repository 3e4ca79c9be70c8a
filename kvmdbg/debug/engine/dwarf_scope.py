"""Functions, variables and their locations from an ELF's DWARF (.debug_info, location
lists), read with pyelftools: what `info scope`, `info address`, `info locals`/`args`,
`print VAR` and the frame lines of `backtrace` need.

Locations are evaluated for the simple cases gdb users meet first: a register
(DW_OP_regN), an address (DW_OP_addr, DW_OP_bregN, DW_OP_fbreg with the function's
DW_AT_frame_base, which GCC makes DW_OP_call_frame_cfa), a constant (DW_OP_litN /
DW_OP_constN with DW_OP_stack_value) and location lists (the entry whose range holds the
frame's PC), and DW_OP_piece compositions of those (stack.py assembles them). Anything
else (DW_OP_entry_value, ...) is `<optimized out>` when printed, as gdb prints a value it
cannot reconstruct.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmdbg.debug.engine.dwarf_types import VOID, DType, Member
from kvmdbg.debug.engine.frames import DWARF_REGS


# GCC's DW_AT_name of the C integer types -> the name gdb 13 prints for them.
GDB_BASE_NAMES = {
    "long unsigned int": "unsigned long", "long int": "long",
    "long long unsigned int": "unsigned long long", "long long int": "long long",
    "short unsigned int": "unsigned short", "short int": "short",
    "__int128 unsigned": "unsigned __int128",
}


class LocationError(Exception):
    """A location kvmdbg does not evaluate (its text is the reason)."""


@dataclass
class Variable:
    name: str
    die: object
    cu: object
    is_arg: bool
    db: "DwarfScope"

    @property
    def type(self) -> DType:
        off = type_die_offset(self.die)
        return self.db.type_at(off) if off is not None else VOID

    @property
    def is_label(self) -> bool:
        return self.die.tag == "DW_TAG_label"

    def location(self, pc: int | None):
        """('expr', ops) for the PC (a list of DWARFExprOp), ('none', None) when optimised
        out there, or ('list', entries) with pc None; ('label', address) for a label."""
        if self.is_label:
            low = self.die.attributes.get("DW_AT_low_pc")
            return ("label", low.value) if low is not None else ("none", None)
        attr = self.die.attributes.get("DW_AT_location")
        if attr is None and self.die.attributes.get("DW_AT_declaration"):
            # an extern declaration: gdb resolves it through the ELF symbol table
            address = self.db.elf_symbols.get(self.name)
            if address is not None:
                return "extern", address
        if attr is None:
            if "DW_AT_const_value" in self.die.attributes:
                return "const", self.die.attributes["DW_AT_const_value"].value
            return "none", None
        loc = self.db.loc_parser.parse_from_attribute(attr, self.cu.header.version, die=self.die)
        if hasattr(loc, "loc_expr"):
            return "expr", self.db.ops(loc.loc_expr, self.cu)
        entries = self.db.ranges_of(loc, self.cu)
        if pc is None:
            return "list", entries
        for lo, hi, ops in entries:
            if lo <= pc < hi:
                return "expr", ops
        return "none", None


@dataclass
class Function:
    name: str
    low: int
    high: int
    die: object
    cu: object
    db: "DwarfScope"
    blocks: list = field(default_factory=list)

    @property
    def return_type(self) -> DType:
        off = type_die_offset(self.die)
        return self.db.type_at(off) if off is not None else VOID

    def frame_base_ops(self):
        a = self.die.attributes.get("DW_AT_frame_base")
        return self.db.ops(a.value, self.cu) if a is not None and a.form == "DW_FORM_exprloc" \
            else None

    def arguments(self) -> list:
        return [v for v in self.variables(None) if v.is_arg]

    def variables(self, pc: int | None, nested: bool = False) -> list:
        """The function's own parameters and variables (DIE order); with nested and a PC,
        those of the lexical blocks holding PC too, innermost first (gdb's info locals)."""
        own = [self._var(d) for d in self._own(self.die)]
        if not nested or pc is None:
            return own
        inner: list = []
        self._blocks(self.die, pc, inner)
        return inner + own

    def _own(self, die):
        """The variable DIEs of a scope, in DIE order; a lexical block without an address
        range is no scope of its own (gdb reads its children into the enclosing one)."""
        for d in die.iter_children():
            if d.tag in ("DW_TAG_formal_parameter", "DW_TAG_variable", "DW_TAG_label") and \
                    _name(d):
                yield d
            elif d.tag == "DW_TAG_lexical_block" and "DW_AT_low_pc" not in d.attributes and \
                    "DW_AT_ranges" not in d.attributes:
                yield from self._own(d)

    def _blocks(self, die, pc: int, out: list) -> None:
        for d in die.iter_children():
            if d.tag == "DW_TAG_lexical_block" and self.db.die_contains(d, self.cu, pc):
                nested: list = []
                self._blocks(d, pc, nested)
                out[:0] = [self._var(v) for v in self._own(d)]
                out[:0] = nested

    def _var(self, d) -> Variable:
        return Variable(_name(d), d, self.cu, d.tag == "DW_TAG_formal_parameter", self.db)


def origin(die, name: str):
    """die's attribute NAME, or that of the DIE it is a concrete instance of
    (DW_AT_abstract_origin, DW_AT_specification), as gdb reads them; None if neither has it."""
    for _ in range(4):
        a = die.attributes.get(name)
        if a is not None:
            return die, a
        ref = next((r for r in ("DW_AT_abstract_origin", "DW_AT_specification")
                    if r in die.attributes), None)
        if ref is None:
            return None
        die = die.get_DIE_from_attribute(ref)
    return None


def type_die_offset(die):
    found = origin(die, "DW_AT_type")
    return found[0].get_DIE_from_attribute("DW_AT_type").offset if found else None


def _constant_form(attr) -> bool:
    return attr.form in ("DW_FORM_data1", "DW_FORM_data2", "DW_FORM_data4", "DW_FORM_data8",
                         "DW_FORM_sdata", "DW_FORM_udata", "DW_FORM_implicit_const")


def _name(die) -> str:
    found = origin(die, "DW_AT_name")
    a = found[1] if found else None
    if a is None:
        return ""
    v = a.value
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class DwarfScope:
    """The index of one ELF's DWARF: functions by address and name, global variables and
    named types by name, types by DIE offset."""

    def __init__(self, elf):
        from elftools.dwarf.dwarf_expr import DWARFExprParser
        from elftools.dwarf.locationlists import LocationParser
        self.dwarf = elf.get_dwarf_info()
        self.loc_parser = LocationParser(self.dwarf.location_lists())
        self._expr_parser = DWARFExprParser
        self.functions: list = []
        self.elf_symbols: dict = {}     # name -> address, for extern declarations
        self.by_name: dict = {}
        self.globals: dict = {}
        self.type_names: dict = {}
        self._types: dict = {}
        self._cu_base: dict = {}
        for cu in self.dwarf.iter_CUs():
            top = cu.get_top_DIE()
            low = top.attributes.get("DW_AT_low_pc")
            self._cu_base[cu.cu_offset] = low.value if low is not None else 0
            for die in top.iter_children():
                self._index(die, cu)
        self.functions.sort(key=lambda f: f.low)

    def _index(self, die, cu) -> None:
        tag = die.tag
        n = _name(die)
        if tag == "DW_TAG_subprogram" and n:
            rng = self.pc_range(die, cu)
            if rng is not None:
                f = Function(n, rng[0], rng[1], die, cu, self)
                self.functions.append(f)
                self.by_name.setdefault(n, f)
        elif tag == "DW_TAG_variable" and n and not die.attributes.get("DW_AT_declaration"):
            old = self.globals.get(n)       # a definition with a location wins
            if old is None or "DW_AT_location" not in old.die.attributes:
                self.globals[n] = Variable(n, die, cu, False, self)
        elif tag in ("DW_TAG_typedef", "DW_TAG_base_type") and n:
            self.type_names.setdefault(n, die.offset)
        elif tag in ("DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_enumeration_type") \
                and n and not die.attributes.get("DW_AT_declaration"):
            kind = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
                    "DW_TAG_enumeration_type": "enum"}[tag]
            self.type_names.setdefault(f"{kind} {n}", die.offset)

    # --- addresses ---

    def pc_range(self, die, cu):
        a = die.attributes
        lo = a.get("DW_AT_low_pc")
        hi = a.get("DW_AT_high_pc")
        if lo is None or hi is None:
            return None
        high = hi.value if hi.form == "DW_FORM_addr" else lo.value + hi.value
        return lo.value, high

    def die_contains(self, die, cu, pc: int) -> bool:
        rng = self.pc_range(die, cu)
        if rng is not None:
            return rng[0] <= pc < rng[1]
        r = die.attributes.get("DW_AT_ranges")
        if r is None:
            return False
        try:
            rl = self.dwarf.range_lists()
            entries = rl.get_range_list_at_offset(r.value, cu=cu) if r.form == "DW_FORM_sec_offset" \
                else rl.get_range_list_at_offset_ex(r.value, cu=cu)
        except Exception:                 # noqa: BLE001 - a range list pyelftools cannot read
            return False
        base = self._cu_base.get(cu.cu_offset, 0)
        for e in entries:
            if hasattr(e, "base_address"):
                base = e.base_address
            elif hasattr(e, "begin_offset"):
                lo = e.begin_offset if getattr(e, "is_absolute", False) else base + e.begin_offset
                hi = e.end_offset if getattr(e, "is_absolute", False) else base + e.end_offset
                if lo <= pc < hi:
                    return True
        return False

    def function_at(self, pc: int) -> Function | None:
        import bisect
        i = bisect.bisect_right([f.low for f in self.functions], pc) - 1
        while i >= 0:
            f = self.functions[i]
            if f.low <= pc < f.high:
                return f
            if f.high <= pc and i < len(self.functions) - 1:
                break
            i -= 1
        return None

    def inline_chain(self, f: Function, pc: int) -> list:
        """The inlined calls that hold pc in f, outermost first, each as a Function whose
        die is the DW_TAG_inlined_subroutine (its name from the abstract origin)."""
        chain: list = []
        die = f.die
        while True:
            nxt = self._inlined_at(die, f.cu, pc)
            if nxt is None:
                return chain
            chain.append(Function(_name(nxt), f.low, f.high, nxt, f.cu, self))
            die = nxt

    def _inlined_at(self, die, cu, pc: int):
        todo = list(die.iter_children())
        while todo:
            d = todo.pop(0)
            if d.tag == "DW_TAG_inlined_subroutine" and self.die_contains(d, cu, pc):
                return d
            if d.tag == "DW_TAG_lexical_block" and self.die_contains(d, cu, pc):
                todo[:0] = list(d.iter_children())
        return None

    def entry_pc(self, die, cu):
        """Where an inlined call begins (DW_AT_entry_pc, else DW_AT_low_pc), or None."""
        a = die.attributes
        for name in ("DW_AT_entry_pc", "DW_AT_low_pc"):
            if name in a and a[name].form == "DW_FORM_addr":
                return a[name].value
        return None

    def call_site(self, inlined: Function):
        """(file, line) of an inlined call (DW_AT_call_file/DW_AT_call_line), gdb's names."""
        a = inlined.die.attributes
        line = a["DW_AT_call_line"].value if "DW_AT_call_line" in a else 0
        index = a["DW_AT_call_file"].value if "DW_AT_call_file" in a else None
        names = self._file_names(inlined.cu)
        return names.get(index, "??"), line

    def _file_names(self, cu) -> dict:
        cache = self.__dict__.setdefault("_names", {})
        if cu.cu_offset not in cache:
            from kvmdbg.debug.engine.source import _file_names
            lp = self.dwarf.line_program_for_CU(cu)
            cache[cu.cu_offset] = _file_names(lp) if lp is not None else {}
        return cache[cu.cu_offset]

    def ops(self, raw, cu) -> list:
        return self._expr_parser(cu.structs).parse_expr(raw)

    def ranges_of(self, entries, cu) -> list:
        """(low, high, ops) of each entry of a location list."""
        base = self._cu_base.get(cu.cu_offset, 0)
        out = []
        for e in entries:
            if hasattr(e, "base_address"):
                base = e.base_address
            elif hasattr(e, "loc_expr"):
                lo, hi = e.begin_offset, e.end_offset
                if not getattr(e, "is_absolute", False):
                    lo, hi = base + lo, base + hi
                out.append((lo, hi, self.ops(e.loc_expr, cu)))
        return out

    # --- types ---

    def type_at(self, offset: int) -> DType:
        t = self._types.get(offset)
        if t is None:
            die = self.dwarf.get_DIE_from_refaddr(offset)
            t = self._types[offset] = self._make(die)
        return t

    def type_named(self, text: str) -> DType | None:
        key = " ".join(text.split())
        off = self.type_names.get(key)
        if off is None:
            gcc = {v: k for k, v in GDB_BASE_NAMES.items()}.get(key)
            off = self.type_names.get(gcc) if gcc else None
        return self.type_at(off) if off is not None else None

    def _target(self, die):
        if "DW_AT_type" not in die.attributes:
            return None
        return (self, die.get_DIE_from_attribute("DW_AT_type").offset)

    def _make(self, die) -> DType:
        a = die.attributes
        n = _name(die)
        size = a["DW_AT_byte_size"].value if "DW_AT_byte_size" in a else 0
        tag = die.tag
        if tag == "DW_TAG_base_type":
            return DType("base", GDB_BASE_NAMES.get(n, n), size, a["DW_AT_encoding"].value if "DW_AT_encoding" in a else 0)
        if tag == "DW_TAG_unspecified_type":
            return DType("void", n or "void")
        if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return DType("ptr", "", size or 8, _target=self._target(die))
        if tag == "DW_TAG_typedef":
            return DType("typedef", n, _target=self._target(die))
        if tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
            return DType(tag[7:-5], "", _target=self._target(die))
        if tag in ("DW_TAG_restrict_type", "DW_TAG_atomic_type"):     # shown as their target
            tt = self._target(die)
            return self.type_at(tt[1]) if tt is not None else VOID
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            t = DType("struct" if tag == "DW_TAG_structure_type" else "union", n, size)
            for m in die.iter_children():
                if m.tag != "DW_TAG_member":
                    continue
                ma = m.attributes
                off = ma["DW_AT_data_member_location"].value if "DW_AT_data_member_location" in ma else 0
                bit_size = ma["DW_AT_bit_size"].value if "DW_AT_bit_size" in ma else 0
                bit_off = 0
                if "DW_AT_data_bit_offset" in ma:           # DWARF 4+: bits from the start
                    off, bit_off = divmod(ma["DW_AT_data_bit_offset"].value, 8)
                mt = self.type_at(m.get_DIE_from_attribute("DW_AT_type").offset) \
                    if "DW_AT_type" in ma else VOID
                t.members.append(Member(_name(m), mt, off if isinstance(off, int) else 0,
                                        bit_size, bit_off))
            return t
        if tag == "DW_TAG_enumeration_type":
            t = DType("enum", n, size, a["DW_AT_encoding"].value if "DW_AT_encoding" in a else 0)
            for e in die.iter_children():
                if e.tag == "DW_TAG_enumerator":
                    t.members.append((_name(e), e.attributes["DW_AT_const_value"].value))
            tt = self._target(die)
            if tt is not None and self.type_at(tt[1]).signed:
                t.encoding = 0x5
            return t
        if tag == "DW_TAG_array_type":
            dims = []
            for sub in die.iter_children():
                if sub.tag == "DW_TAG_subrange_type":
                    sa = sub.attributes
                    count, upper = sa.get("DW_AT_count"), sa.get("DW_AT_upper_bound")
                    if count is not None and _constant_form(count):
                        dims.append(count.value)
                    elif upper is not None and _constant_form(upper):
                        dims.append(upper.value + 1)
                    else:                       # no bound, or a variable one (a VLA)
                        dims.append(None)
            t = None
            inner = self._target(die)
            for count in reversed(dims or [None]):
                t = DType("array", "", _target=inner if t is None else t, count=count)
            return t
        if tag == "DW_TAG_subroutine_type":
            t = DType("func", "", _target=self._target(die),
                      prototyped=bool(a.get("DW_AT_prototyped")))
            for p in die.iter_children():
                if p.tag == "DW_TAG_formal_parameter":
                    t.params.append(self.type_at(p.get_DIE_from_attribute("DW_AT_type").offset))
                elif p.tag == "DW_TAG_unspecified_parameters":
                    t.varargs = True
            return t
        return DType("void", n or "void")

    def function_type(self, f: Function) -> DType:
        """A function's type (`int (ac_test_t *)`), from its DIE."""
        off = type_die_offset(f.die)
        proto = origin(f.die, "DW_AT_prototyped")
        t = DType("func", "", _target=(self, off) if off is not None else None,
                  prototyped=bool(proto and proto[1].value))
        for p in f.die.iter_children():
            if p.tag == "DW_TAG_formal_parameter" and type_die_offset(p) is not None:
                t.params.append(self.type_at(type_die_offset(p)))
            elif p.tag == "DW_TAG_unspecified_parameters":
                t.varargs = True
        return t


# --- describing locations (gdb's info scope / info address words) ---

def reg_name(n: int) -> str:
    return DWARF_REGS[n] if n < len(DWARF_REGS) else f"dwarf{n}"


def describe(ops, in_list: bool = False) -> str | None:
    """gdb's short description of a simple location expression, else None (complex; in a
    location list, DW_OP_addr too: gdb makes only a lone one LOC_STATIC)."""
    if len(ops) == 1:
        op = ops[0]
        name = op.op_name
        if name.startswith("DW_OP_reg") and name != "DW_OP_regx":
            return f"a variable in ${reg_name(int(name[9:]))}"
        if name == "DW_OP_regx":
            return f"a variable in ${reg_name(op.args[0])}"
        if name == "DW_OP_addr" and not in_list:
            return f"static storage at address {op.args[0]:#x}"
    if len(ops) == 2 and ops[1].op_name == "DW_OP_stack_value" and \
            ops[0].op_name.startswith("DW_OP_lit"):
        return f"the constant {int(ops[0].op_name[9:])}"
    return None


def disassemble(ops, indent: int = 0) -> list:
    """gdb's disassemble_dwarf_expression: `     0: DW_OP_fbreg -65` per operation."""
    out = []
    for op in ops:
        text = f"  {op.offset:>{indent + 4}}: {op.op_name}"
        name = op.op_name
        if name.startswith("DW_OP_breg") and name != "DW_OP_bregx":
            text += f" {op.args[0]} [${reg_name(int(name[10:]))}]"
        elif name.startswith("DW_OP_reg") and name != "DW_OP_regx":
            text += f" [${reg_name(int(name[9:]))}]"
        elif name == "DW_OP_addr":
            text += f" {op.args[0]:#x}"
        elif name == "DW_OP_entry_value" or name == "DW_OP_GNU_entry_value":
            out.append(text)
            sub = disassemble(op.args[0], indent + 2)
            base = op.offset + 2
            out.extend(_shift_offsets(sub, base, indent + 2))
            continue
        elif name in ("DW_OP_bra", "DW_OP_skip"):          # gdb: the target's offset
            text += f" {op.offset + 3 + op.args[0]}"
        elif op.args:
            text += " " + " ".join(str(a) for a in op.args)
        out.append(text)
    return out


def _shift_offsets(lines, base, indent):
    out = []
    for ln in lines:
        head, _, rest = ln.partition(":")
        off = int(head.strip()) + base
        out.append(f"  {off:>{indent + 4}}:{rest}")
    return out
