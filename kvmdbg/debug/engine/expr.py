"""The expression language: a small, safe C-like language of its own (never Python eval).

    42  0x7000  0b101  'A'  "text"        numbers, characters, strings
    $rax $eax $al $rip $pc $cr4 $efer      registers of the selected vCPU (sub-registers too)
    $cr4.smep  $cr0.wp  $eflags.zf         control-register and flag bit fields
    $1 $ $$ $$2                            value history (gdb)
    $_step $_exitcode $_event.root $foo    convenience variables (user ones with `set $foo = 1`)
    flip  start                            symbols of the program
    *(u64*)gpa:0x7000  *(u32*)$rsp  {u16}0x1000  *ADDR     memory (gva unless gpa:/hpa:)
    (u8)$rax  (u64 *)$rsp                  casts: u8 u16 u32 u64 s8 .. s64, char, int, long, TYPE *
    &flip  &*(u64*)0x7000  sizeof(u32)  sizeof $eax     address of memory or a symbol; sizes
    + - * / % & | ^ << >> ~ ! == != < <= > >= && || ( )   with C precedence
    $rsp + 8  (u64 *)$rsp + 1              pointer arithmetic in units of the pointed-to type
                                           ($rsp, $rbp are void *, $pc code: bytes)
    LVALUE = EXPR                          assignment (set, print)

This module only parses: text -> a tree of small node objects. evaluate.py gives
them values against a Session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmdbg.errors import CommandError


class ExprError(CommandError):
    """A malformed or unevaluable expression (one line, gdb's wording where gdb has one)."""


# --- types ---

@dataclass(frozen=True)
class Type:
    name: str
    size: int = 8             # bytes
    signed: bool = True
    kind: str = "int"         # int, ptr, code, flags, char, str, struct, void
    pointee: "Type | None" = None
    bits: tuple = ()          # for kind 'flags': ((NAME, bit), ...)
    dtype: object = field(default=None, compare=False, hash=False)   # a DWARF type (DType)

    def pointer(self) -> "Type":
        return Type(f"{self.name} *", 8, False, "ptr", self)


U8, U16, U32, U64 = (Type(f"u{8 * n}", n, False) for n in (1, 2, 4, 8))
S8, S16, S32, S64 = (Type(f"s{8 * n}", n, True) for n in (1, 2, 4, 8))
CHAR = Type("char", 1, True, "char")
VOID = Type("void", 0, False, "void")
STR = Type("string", 0, False, "str")
STRUCT = Type("struct", 0, False, "struct")

def _named(t: Type, name: str) -> Type:
    """t under the name it was written with, so `(long *)$rsp` prints as gdb prints it."""
    return t if t.name == name else Type(name, t.size, t.signed, t.kind, t.pointee, t.bits)


TYPE_NAMES = {name: _named(t, name) for name, t in {
    "u8": U8, "u16": U16, "u32": U32, "u64": U64,
    "s8": S8, "s16": S16, "s32": S32, "s64": S64,
    "i8": S8, "i16": S16, "i32": S32, "i64": S64,
    "uint8_t": U8, "uint16_t": U16, "uint32_t": U32, "uint64_t": U64,
    "int8_t": S8, "int16_t": S16, "int32_t": S32, "int64_t": S64,
    "char": CHAR, "short": S16, "int": S32, "long": S64, "unsigned": U32,
}.items()}


# --- nodes ---

@dataclass
class Num:
    value: int
    type: Type = S64


@dataclass
class Str:
    value: str


@dataclass
class Dollar:
    """$name: register, convenience variable or value history ($, $$, $$N, $N)."""
    name: str


@dataclass
class Symbol:
    name: str


@dataclass
class Space:
    """gva:/gpa:/hpa: in front of an address: evaluates to the address, remembers the space."""
    space: str
    operand: object


@dataclass
class Field:
    operand: object
    name: str


@dataclass
class Unary:
    op: str
    operand: object


@dataclass
class Deref:
    operand: object
    type: Type | None = None     # the size to read; None: the operand's pointee, else u64


@dataclass
class AddrOf:
    """&LVALUE: the address of memory (or of a symbol)."""
    operand: object


@dataclass
class SizeOf:
    """sizeof EXPR or sizeof(TYPE): the size in bytes, the operand never evaluated for effect."""
    operand: object = None
    type: Type | None = None


@dataclass
class Cast:
    type: Type
    operand: object


@dataclass
class Binary:
    op: str
    left: object
    right: object


@dataclass
class Assign:
    target: object
    value: object


# --- tokens ---

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>0[xX][0-9a-fA-F_]*|0[bB][01_]*|0[oO][0-7_]*|[0-9][0-9_]*)(?P<numtail>[A-Za-z_][A-Za-z0-9_]*)?
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<chr>'(?:[^'\\]|\\.{1,3})')
  | (?P<space>(?:gva|gpa|hpa):)
  | (?P<dollar>\$\$[0-9]*|\$[0-9]+|\$[A-Za-z_][A-Za-z0-9_]*|\$)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>->|<<=?|>>=?|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!<>()=.{}])
""", re.X)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"',
            "a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "v": "\v"}


def unescape(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567":
                j = i + 1
                while j < len(body) and j < i + 4 and body[j] in "01234567":
                    j += 1
                out.append(chr(int(body[i + 1:j], 8)))
                i = j
                continue
            if nxt == "x":
                j = i + 2
                while j < len(body) and body[j] in "0123456789abcdefABCDEF":
                    j += 1
                if j == i + 2:
                    raise ExprError("\\x used with no following hex digits.")
                out.append(chr(int(body[i + 2:j], 16) & 0xFF))
                i = j
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str):
    """[(kind, value)] ending with ('end', '')."""
    toks = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"Invalid character '{text[pos]}' in expression.")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind in ("num", "numtail"):
            raw = m.group("num")
            if m.group("numtail"):
                raise ExprError(f"Invalid number \"{raw + m.group('numtail')}\".")
            try:
                toks.append(("num", int(raw.replace("_", ""), 0) if not _is_octal(raw)
                             else int(raw, 8)))
            except ValueError:
                raise ExprError(f"Invalid number \"{raw}\".") from None
        elif kind == "str":
            toks.append(("str", unescape(m.group("str")[1:-1])))
        elif kind == "chr":
            body = unescape(m.group("chr")[1:-1])
            if len(body) != 1:
                raise ExprError(f"Invalid character constant {m.group('chr')}.")
            toks.append(("char", ord(body) & 0xFF))
        elif kind == "space":
            toks.append(("space", m.group("space")[:-1]))
        elif kind == "dollar":
            toks.append(("dollar", m.group("dollar")[1:]))
        elif kind == "ident":
            toks.append(("ident", m.group("ident")))
        else:
            toks.append(("op", m.group("op")))
    toks.append(("end", ""))
    return toks


def _is_octal(raw: str) -> bool:
    return len(raw) > 1 and raw[0] == "0" and raw[1].isdigit()


# --- parser (operator precedence with explicit stacks: no recursion per level or term) ---

# C's binary operators, loosest first; `=` (assignment) is looser still and right-associative.
_BINARY = [
    ("||",), ("&&",), ("|",), ("^",), ("&",), ("==", "!="), ("<", "<=", ">", ">="),
    ("<<", ">>"), ("+", "-"), ("*", "/", "%"),
]
_PREC = {"=": 0} | {op: level + 1 for level, ops in enumerate(_BINARY) for op in ops}
_PREFIX = ("-", "+", "!", "~", "*", "&")

MAX_DEPTH = 10_000
"""Parentheses and operators waiting for their operands, at most (gdb's parser stack holds
10,000 entries). Long flat sums need only a few: a left-associative operator is applied
as soon as the next one of no higher precedence arrives."""


class _Parser:
    def __init__(self, text: str, types=None):
        self.text = text
        self.types = types          # name -> Type or None: the program's DWARF types
        self.toks = tokenize(text)
        self.i = 0

    def peek(self, k: int = 0):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.i += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise self.syntax_error()

    def syntax_error(self) -> ExprError:
        return ExprError(f"A syntax error in expression, near `{self._rest()}'.")

    def _rest(self) -> str:
        # Rebuild the text from the current token on, for gdb's "near `...'" message.
        kind, val = self.peek()
        if kind == "end":
            return ""
        needle = {"dollar": f"${val}", "space": f"{val}:"}.get(kind, str(val))
        pos = self.text.find(needle) if kind not in ("num", "str", "char") else -1
        return self.text[pos:] if pos >= 0 else needle

    def parse(self):
        if self.peek()[0] == "end":
            raise ExprError("Argument required (expression to compute).")
        node = self.expression()
        if self.peek()[0] != "end":
            raise self.syntax_error()
        return node

    def expression(self):
        """Operands go on `out`; on `ops`, '(' marks, prefix operators (a function that
        builds the node) and binary operators waiting for their right operand."""
        out: list = []
        ops: list = []
        opened = 0                      # '(' marks on ops

        def reduce_one():
            kind, what = ops.pop()
            if kind == "prefix":
                out.append(what(out.pop()))
            else:
                right = out.pop()
                left = out.pop()
                out.append(Assign(left, right) if what == "=" else Binary(what, left, right))

        def push(entry):
            if len(ops) >= MAX_DEPTH:
                raise ExprError(f"Expression too deeply nested (more than {MAX_DEPTH:,} "
                                "parentheses and operators waiting for their operands).")
            ops.append(entry)

        while True:
            # An operand, after any prefix operators.
            kind, val = self.peek()
            if kind == "op" and val in _PREFIX:
                self.take()
                push(("prefix", _PREFIX_NODES[val]))
                continue
            if kind == "op" and val == "{":
                self.take()
                t = self._type_name()
                self.expect("}")
                push(("prefix", lambda x, t=t: Deref(x, t)))
                continue
            if kind == "space":
                self.take()
                push(("prefix", lambda x, sp=val: Space(sp, x)))
                continue
            if (kind, val) == ("ident", "sizeof"):
                self.take()
                t = self._cast_type()
                if t is None:
                    push(("prefix", lambda x: SizeOf(x)))
                    continue
                out.append(SizeOf(None, t))
            else:
                t = self._cast_type()
                if t is not None:
                    push(("prefix", lambda x, t=t: Cast(t, x)))
                    continue
                if (kind, val) == ("op", "("):
                    self.take()
                    push(("(", None))
                    opened += 1
                    continue
                out.append(self.primary())
            self._postfix(out)
            # Then binary operators and closing parentheses, until the next operand.
            while True:
                kind, val = self.peek()
                if kind == "op" and val == ")" and opened:
                    self.take()
                    while ops[-1][0] != "(":
                        reduce_one()
                    ops.pop()
                    opened -= 1
                    self._postfix(out)
                    continue
                if kind == "op" and val in _PREC:
                    prec = _PREC[val]
                    while ops and ops[-1][0] != "(" and (
                            ops[-1][0] == "prefix" or _PREC[ops[-1][1]] > prec or
                            (_PREC[ops[-1][1]] == prec and val != "=")):
                        reduce_one()
                    self.take()
                    push(("binary", val))
                    break
                # The end of the expression.
                while ops:
                    if ops[-1][0] == "(":
                        raise self.syntax_error()
                    reduce_one()
                return out.pop()

    def _postfix(self, out: list) -> None:
        while self.peek() in (("op", "."), ("op", "->")):
            arrow = self.take()[1] == "->"
            kind, name = self.take()
            if kind != "ident":
                raise ExprError(f"A syntax error in expression, near `{'->' if arrow else '.'}'.")
            for part in name.split("."):        # a.b.c lexes as one dotted identifier
                out[-1] = Field(Deref(out[-1]) if arrow else out[-1], part)
                arrow = False

    def _type_name(self) -> Type:
        tk, tname = self.take()
        if tk != "ident" or tname not in TYPE_NAMES:
            raise ExprError(f"No type named {tname or '?'}.")
        return TYPE_NAMES[tname]

    def _program_type(self, k: int):
        """(Type, tokens) of a program type name at token k (`ac_test_t`, `struct foo`)."""
        if self.types is None:
            return None, 0
        kind, name = self.peek(k)
        if kind != "ident":
            return None, 0
        if name in ("struct", "union", "enum") and self.peek(k + 1)[0] == "ident":
            t = self.types(f"{name} {self.peek(k + 1)[1]}")
            if t is None:
                raise ExprError(f"No {name} type named {self.peek(k + 1)[1]}.")
            return t, 2
        t = self.types(name)
        return (t, 1) if t is not None else (None, 0)

    def _cast_type(self):
        """At '(' TYPE ['*'...] ')': the Type (pointer if starred), else None without consuming."""
        if self.peek() != ("op", "("):
            return None
        kind, name = self.peek(1)
        program, used = self._program_type(1)
        if program is not None and name not in TYPE_NAMES:
            t, k = program, 1 + used
        elif kind != "ident" or name not in TYPE_NAMES:
            return None
        else:
            t, k = TYPE_NAMES[name], 2
        if name == "unsigned" and self.peek(2)[0] == "ident" and self.peek(2)[1] in ("char", "short", "int", "long"):
            word = self.peek(2)[1]
            t = _named({"char": U8, "short": U16, "int": U32, "long": U64}[word], f"unsigned {word}")
            k = 3
        stars = 0
        while self.peek(k) == ("op", "*"):
            stars += 1
            k += 1
        if self.peek(k) != ("op", ")"):
            return None
        self.i += k + 1
        for _ in range(stars):
            t = self.types.pointer(t) if t.dtype is not None else t.pointer()
        return t

    def primary(self):
        kind, val = self.take()
        if kind == "num":
            if val >> 64:
                raise ExprError("Numeric constant too large.")
            return Num(val, S64 if val < 1 << 63 else U64)
        if kind == "char":
            return Num(val - 256 if val >= 128 else val, CHAR)
        if kind == "str":
            return Str(val)
        if kind == "dollar":
            return Dollar(val)
        if kind == "ident":
            if val in TYPE_NAMES:
                raise ExprError("Attempt to use a type name as an expression")
            # A dotted identifier is a symbol name (assemblers allow dots); the evaluator
            # reads `at.flags` as a member where `at` is a DWARF variable.
            return Symbol(val)
        self.i -= 1
        raise self.syntax_error()


_PREFIX_NODES = {
    "-": lambda x: Unary("-", x), "+": lambda x: Unary("+", x), "!": lambda x: Unary("!", x),
    "~": lambda x: Unary("~", x), "*": lambda x: Deref(x), "&": lambda x: AddrOf(x),
}


def parse(text: str, types=None):
    """Parse an expression; ExprError with a one-line message if it is malformed.
    types(name) gives the Type of a program type name (`ac_test_t`, `struct foo`)."""
    return _Parser(text, types).parse()


def walk(node):
    """Every node of a tree, without recursion (trees can be 10,000 deep)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        todo.extend(v for v in vars(n).values() if hasattr(v, "__dataclass_fields__")
                    and not isinstance(v, Type))


def split_condition(text: str) -> tuple[str, str | None]:
    """'LOCATION if EXPR' -> ('LOCATION', 'EXPR'); the 'if' must be a separate word."""
    m = re.search(r"(?:^|\s)if(?:\s|$|(?=\())", text)
    if m is None:
        return text.strip(), None
    return text[:m.start()].strip(), text[m.end():].strip()
