"""Differential test of the interpreter against unicorn (QEMU's TCG), an independent oracle.

Random instruction sequences (deterministic seeds, in batches) run from the same
start state on both; the test then compares the 16 GPRs, RIP, RFLAGS (without the
arithmetic flags the SDM leaves undefined after the instruction that last wrote
them), a two-page data buffer that every memory operand points into, and the top of
the stack.

How the sequences stay comparable:

- Registers used as base/index of memory operands are reserved for the whole
  sequence (never written), so every address lands in the data buffer or the stack.
- The generator tracks, conservatively, which flags may be undefined; before an
  instruction reads a possibly-undefined flag (Jcc, SETcc, CMOVcc, ADC, RCL,
  PUSHFQ ...) it inserts a CMP, which defines all six. So undefined flags never leak
  into registers or memory, and only the final flag comparison needs a mask.
- That mask is exact: unicorn is single-stepped and each instruction's defined and
  undefined flags are worked out from its decoded form and the actual shift/rotate
  count (SDM Vol. 2 per-instruction "Flags Affected").
- Divisions get operands chosen so they cannot raise #DE; #DE itself has directed
  tests at the end of the file.
- Where unicorn's QEMU departs from the SDM, the generator steers clear: it clears the
  upper halves of the registers a 32-bit CMPXCHG or BSF/BSR leaves alone (unicorn
  zero-extends them anyway), and gives SHLD/SHRD with an immediate count no
  RIP-relative operand (unicorn works that address out one byte short). Directed tests
  of those cases are in test_scan_xchg_frame.py.

The interpreter runs each sequence twice: in one go (run() until HLT, so as basic
blocks), compared at the end including memory; then one instruction at a time,
comparing registers and defined flags after every instruction, so flags that no
later instruction reads are checked too. On an end-state mismatch the sequence is
replayed on both machines step by step to name the first instruction after which
they differ.

The code size is a Mode (generator, forms, assembler, unicorn mode, registers compared,
the interpreter's setup); test_differential32.py runs the same machinery on 32-bit code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as U

from kvmdbg.cpu.decoder import Decoder
from kvmdbg.cpu.executor import HALTED, SHUTDOWN, run
from kvmdbg.cpu.flags import peek as peek_rflags
from kvmdbg.errors import KvmdbgError
from tests.helpers import asm, machine

M64 = (1 << 64) - 1
CODE = 0x100000
SLOT = 0x400                 # code bytes per sequence (each sequence has its own address)
DATA = 0x200000
DATA_SIZE = 0x2000           # two pages: unaligned accesses may straddle the boundary
STACK_LO, STACK_HI = 0x70000, 0x80000
STACK_CMP = 0x7E000          # compared stack window [STACK_CMP, STACK_HI)

SEED = 0x6B766D64
BATCHES = 40
PER_BATCH = 50               # 2,000 sequences

CF, PF, AF, ZF, SF, OF, DF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800, 0x400
ARITH = CF | PF | AF | ZF | SF | OF
FLAG_NAMES = (("CF", CF), ("PF", PF), ("AF", AF), ("ZF", ZF), ("SF", SF), ("OF", OF), ("DF", DF))

R64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi") + tuple(f"r{i}" for i in range(8, 16))
R32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi") + tuple(f"r{i}d" for i in range(8, 16))
R16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di") + tuple(f"r{i}w" for i in range(8, 16))
R8 = ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil") + tuple(f"r{i}b" for i in range(8, 16))
HIGH8 = ("ah", "ch", "dh", "bh")
REGS = {1: R8, 2: R16, 4: R32, 8: R64}
PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
RAX, RCX, RDX, RSP, RBP, RSI, RDI = 0, 1, 2, 4, 5, 6, 7

CCS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
CC_READS = {"o": OF, "no": OF, "b": CF, "ae": CF, "e": ZF, "ne": ZF, "be": CF | ZF, "a": CF | ZF,
            "s": SF, "ns": SF, "p": PF, "np": PF, "l": SF | OF, "ge": SF | OF,
            "le": SF | OF | ZF, "g": SF | OF | ZF}
ALU = ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp")
SHIFTS = ("shl", "sal", "shr", "sar", "rol", "ror", "rcl", "rcr")
SHIFTDS = ("shld", "shrd")
BITSCANS = ("bsf", "bsr", "tzcnt", "lzcnt", "popcnt")


# ---------------------------------------------------------------------------
# SDM flag effects: (flags defined, flags left undefined); the rest are unchanged.
# ---------------------------------------------------------------------------

def shift_effect(mn: str, size: int, count: int) -> tuple[int, int]:
    """SAL/SAR/SHL/SHR, ROL/ROR/RCL/RCR "Flags Affected" for a masked count."""
    if count == 0:
        return 0, 0                                   # a zero count affects no flags
    if mn in ("rol", "ror", "rcl", "rcr"):
        # CF defined; OF only for 1-bit rotates; SF ZF AF PF unaffected.
        return (CF | OF, 0) if count == 1 else (CF, OF)
    undef = AF | (0 if count == 1 else OF)
    if mn in ("shl", "sal", "shr") and count >= size * 8:
        undef |= CF        # "undefined for SHL and SHR where the count >= the operand size"
    return ARITH & ~undef, undef


def shiftd_effect(size: int, count: int) -> tuple[int, int]:
    """SHLD/SHRD "Flags Affected" for a masked count: none for 0; CF SF ZF PF, and OF for
    a count of 1 (AF undefined); everything undefined past the operand size (16-bit only)."""
    if count == 0:
        return 0, 0
    if count > size * 8:
        return 0, ARITH
    undef = AF | (0 if count == 1 else OF)
    return ARITH & ~undef, undef


# Instructions whose effect does not depend on their operands.
FIXED_EFFECT = {
    **{mn: (ARITH, 0) for mn in ("add", "adc", "sub", "sbb", "cmp", "neg", "popfq", "popfd")},
    **{mn: (ARITH & ~AF, AF) for mn in ("and", "or", "xor", "test")},     # CF=OF=0, AF undefined
    **{mn: (ARITH & ~CF, 0) for mn in ("inc", "dec")},                     # CF unaffected
    **{mn: (CF, OF | SF | AF | PF) for mn in ("bt", "bts", "btr", "btc")},  # ZF unaffected
    **{mn: (CF | OF, SF | ZF | AF | PF) for mn in ("mul", "imul")},
    **{mn: (0, ARITH) for mn in ("div", "idiv")},
    **{mn: (ZF, CF | OF | SF | AF | PF) for mn in ("bsf", "bsr")},
    **{mn: (CF | ZF, OF | SF | AF | PF) for mn in ("tzcnt", "lzcnt")},
    **{mn: (ARITH, 0) for mn in ("popcnt", "xadd", "cmpxchg")},
}


def flag_effect(d, rcx: int) -> tuple[int, int]:
    """Exact effect of one decoded instruction (rcx: its value before the instruction)."""
    mn = d.mnemonic
    if mn in SHIFTS:
        size = d.operands[0].size
        if len(d.operands) == 1:
            count = 1
        elif d.operands[1].kind == "imm":
            count = d.operands[1].imm
        else:
            count = rcx & 0xFF
        return shift_effect(mn, size, count & (0x3F if size == 8 else 0x1F))
    if mn in SHIFTDS:
        size = d.operands[0].size
        count = d.operands[2].imm if d.operands[2].kind == "imm" else rcx & 0xFF
        return shiftd_effect(size, count & (0x3F if size == 8 else 0x1F))
    return FIXED_EFFECT.get(mn, (0, 0))


# ---------------------------------------------------------------------------
# Sequence generation
# ---------------------------------------------------------------------------

@dataclass
class Ins:
    text: str = ""
    raw: bytes = b""
    rip_target: int | None = None     # text holds '{disp}' for a RIP-relative operand


@dataclass
class Branch:
    """`op target; body...; target:` (a short forward branch over body); with via,
    `setup...; op via; body...; target:`, setup putting the target (its '{target}') where
    the indirect operand via reads it."""
    op: str
    body: list
    prefix: bytes = b""        # 0x67 (32-bit address size: LOOP counts with ECX)
    via: str = ""
    setup: tuple = ()
    near: bool = False         # the rel32 form (E9, 0F 8x), which assemblers keep for far targets


@dataclass
class Call:
    """`call L1; jmp L2; L1: body...; ret [n]; L2:` (via and setup as for Branch)."""
    body: list
    ret_imm: int = 0
    via: str = ""
    setup: tuple = ()


@dataclass
class Opnd:
    text: str
    kind: str                  # 'reg' | 'mem'
    rex: bool = False          # needs a REX prefix (r8-r15, spl..dil, or 64-bit)
    high: bool = False         # ah ch dh bh
    reg: int = -1


@dataclass
class Seq:
    index: int
    addr: int
    code: bytes
    regs: list
    rflags: int
    data: bytes
    stack: bytes
    forms: list = field(default_factory=list)


def forms() -> list[tuple]:
    """Every instruction form the generator knows; each is forced into some sequence."""
    out: list[tuple] = []
    for mn in ALU:
        for s in (1, 2, 4, 8):
            for p in ("rr", "rm", "mr", "ri", "mi", "ai") + (("ri8", "mi8") if s > 1 else ()):
                out.append(("alu", mn, s, p))
    for s in (1, 2, 4, 8):
        for p in ("rr", "mr", "ri", "mi", "ai"):
            out.append(("alu", "test", s, p))
        for mn in ("inc", "dec", "neg", "not"):
            for k in "rm":
                out.append(("unary", mn, s, k))
        for mn in SHIFTS:
            for k in "rm":
                for c in ("1", "imm", "cl"):
                    out.append(("shift", mn, s, k, c))
        for p in ("rr", "rm", "mr", "ri", "mi"):
            out.append(("mov", s, p))
        out.append(("mov", s, "moffs_load"))
        out.append(("mov", s, "moffs_store"))
        for p in ("rr", "rm"):
            out.append(("xchg", s, p))
        for k in "rm":
            out.append(("mul", "mul", s, k))
            out.append(("mul", "imul", s, k))
            out.append(("div", "div", s, k))
            out.append(("div", "idiv", s, k))
    out.append(("mov", 8, "imm64"))
    out.append(("xchg", 4, "same"))
    for s in (1, 2, 4, 8):
        for mn in ("xadd", "cmpxchg"):
            for k, lock in (("r", False), ("m", False), ("m", True)):
                out.append((mn, s, k, lock))
    for s in (2, 4, 8):
        for mn in BITSCANS:
            for k in "rm":
                out.append(("bitscan", mn, s, k))
        for mn in SHIFTDS:
            for k in "rm":
                for c in ("imm", "cl"):
                    out.append(("shiftd", mn, s, k, c))
    for s in (4, 8):
        out.append(("bswap", s))
    for level in ("0", "1", "n"):
        out.append(("enter", level))
    for s in (2, 8):
        out.append(("leave", s))
    for s in (2, 4, 8):
        for mn in ("bt", "bts", "btr", "btc"):
            for p in ("rr", "ri", "mr", "mi"):
                out.append(("bt", mn, s, p))
        for k in "rm":
            out.append(("imul2", s, k))
            for i in ("imm8", "imm"):
                out.append(("imul3", s, k, i))
        for ss in (1, 2):
            if ss < s:
                for mn in ("movzx", "movsx"):
                    for k in "rm":
                        out.append(("ext", mn, s, ss, k))
        out.append(("lea", s))
        for cc in CCS:
            for k in "rm":
                out.append(("cmov", cc, s, k))
    for k in "rm":
        out.append(("movsxd", k))
    for mn in ("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo"):
        out.append(("implicit", mn))
    for cc in CCS:
        for k in ("low", "high", "rex", "mem"):
            out.append(("setcc", cc, k))
        for how in range(3):
            out.append(("jcc", cc, how))
    for s in (2, 8):
        for k in "rm":
            out.append(("push", s, k))
            out.append(("pop", s, k))
    for s in (1, 2, 4, 8):
        for c in ("1", "imm", "cl"):
            out.append(("sal6", s, c))
    out += [("push16i", 1), ("push16i", 2), ("pop_rsp", 8), ("pop_rsp", 2), ("xchg", 4, "r8d_eax")]
    out += [("push", 8, "imm8"), ("push", 8, "imm32"), ("pushfq",), ("popfq",),
            ("nop",), ("nop_m",), ("pause",), ("cld",), ("std",), ("jmp",), ("call", 0), ("call", 8)]
    for mn in ("loop", "loope", "loopne", "jrcxz", "jecxz"):
        for n in (0, 1, 2, None):
            out.append(("loop", mn, False, n))
    for mn in ("loop", "loope", "loopne"):
        out.append(("loop", mn, True, 0x100000001))
    for op in ("stos", "movs"):
        for s in (1, 2, 4, 8):
            for rep in ("rep", "rep0", ""):
                for df in (0, 1):
                    out.append(("string", op, s, rep, df, False))
            out.append(("string", op, s, "rep", s & 1, True))       # 32-bit address size
            out.append(("string", op, s, "repne", 0, False))        # F2 acts as REP here
    return out


FORMS = tuple(forms())

# Registers each family writes implicitly (must not be reserved as address registers).
IMPLICIT = {"mul": {RAX, RDX}, "div": {RAX, RDX}, "implicit": {RAX, RDX}, "loop": {RCX},
            "string": {RCX, RSI, RDI}, "cmpxchg": {RAX}, "enter": {RBP}, "leave": {RBP}}
# Forms whose body can go inside a branch snippet (no nested control flow, no setup).
SIMPLE = {"alu", "unary", "shift", "mov", "xchg", "ext", "lea", "cmov", "movsxd", "setcc",
          "nop", "nop_m", "pause", "push", "imul2", "imul3", "bt", "bitscan", "bswap", "xadd",
          "shiftd", "incdec1"}
NOP_M = (bytes.fromhex("0f1f00"), bytes.fromhex("0f1f4000"), bytes.fromhex("0f1f440000"),
         bytes.fromhex("660f1f440000"), bytes.fromhex("0f1f8000000000"),
         bytes.fromhex("660f1f840000000000"))


def hexs(v: int) -> str:
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


class Generator:
    """64-bit sequences; the class attributes say what a subclass for another code size changes."""

    NREGS = 16                # GPRs the code can name
    WORD = 8                  # stack slot and register width
    SIZES = (1, 2, 4, 8)      # operand sizes
    REX = True                # REX-only registers (r8-r15, spl..dil) may be chosen
    BASES, INDEXES = (1, 3), (1, 2)   # how many registers address memory (ranges)
    FORMS: tuple = ()         # the forms bodies of branches are drawn from (set below)

    def __init__(self, rng: random.Random, forced: list[tuple]):
        self.rng = rng
        self.items: list = []
        self.undef = 0                        # flags that may be undefined here (static)
        avoid = set()
        for f in forced:
            avoid |= IMPLICIT.get(f[0], set())
        cands = [i for i in range(self.NREGS) if i != RSP and i not in avoid]
        rng.shuffle(cands)
        nb, ni = rng.randint(*self.BASES), rng.randint(*self.INDEXES)
        self.bases, self.indexes = cands[:nb], cands[nb:nb + ni]
        regs = [self.value(self.WORD) for _ in range(self.NREGS)]
        for b in self.bases:
            regs[b] = DATA + rng.randrange(0x800, 0x1800)
        for x in self.indexes:
            regs[x] = rng.randint(-0x60, 0x60) & ((1 << 8 * self.WORD) - 1)
        regs[RSP] = rng.randrange(0x7E800, 0x7F800, self.WORD)
        self.regs = regs
        self.writable = [i for i in range(self.NREGS) if i != RSP and i not in self.bases + self.indexes]
        self.rflags = 0x2 | rng.choice((0, ARITH, rng.getrandbits(12) & ARITH)) | rng.choice((0, DF))

    # --- values ---

    def value(self, size: int) -> int:
        """A random size-byte value, biased to the edges (0, 1, -1, the sign boundary)."""
        bits = size * 8
        r = self.rng
        k = r.random()
        if k < 0.45:
            return r.getrandbits(bits)
        if k < 0.6:
            return r.randrange(0, 4)
        if k < 0.7:
            return (1 << bits) - 1 - r.randrange(0, 3)
        if k < 0.85:
            return ((1 << (bits - 1)) + r.randrange(-2, 2)) & ((1 << bits) - 1)
        return r.getrandbits(r.randrange(1, bits + 1))

    def imm(self, size: int) -> str:
        """An immediate for an ALU-style operand of this size (imm32 sign-extended for 64)."""
        if size == 8:
            v = self.value(4)
            return hexs(v - (1 << 32) if v >> 31 else v)
        return hexs(self.value(size))

    def imm8s(self) -> str:
        v = self.value(1)
        return hexs(v - 256 if v >> 7 else v)

    # --- operands ---

    def reg(self, size: int, write: bool = False, rex: bool = True, high: bool = True) -> Opnd:
        """A register operand. rex/high: whether REX-only or high-byte registers may be chosen."""
        pool = self.writable if write else list(range(self.NREGS))
        choices = []
        for i in pool:
            needs = i >= 8 or size == 8 or (size == 1 and 4 <= i <= 7)
            if needs and not (rex and self.REX):
                continue
            choices.append(Opnd(REGS[size][i], "reg", needs, False, i))
            if size == 1 and high and i < 4:
                choices.append(Opnd(HIGH8[i], "reg", False, True, i))
        return self.rng.choice(choices)

    def mem(self, size: int, rex: bool = True, ptr: bool = True, rip: bool = True) -> Opnd:
        r = self.rng
        pre = f"{PTR[size]} ptr " if ptr else ""
        bases = [b for b in self.bases if rex or b < 8]
        idxs = [x for x in self.indexes if rex or x < 8]
        modes = ["rip", "rsp", "rip", "riz"] if rip else ["rsp", "riz"]
        if bases:
            modes += ["base", "base_d8", "base_d32", "riz"]
            if idxs:
                modes += ["bisd", "bisd", "addr32"]
        if idxs:
            modes.append("isd")
        mode = r.choice(modes)
        if mode == "rip":
            return Opnd(pre + "[rip{disp}]", "mem", False), DATA + r.randrange(0x120, DATA_SIZE - 0x120)
        needs = False
        if mode == "rsp":
            d = r.randrange(0, 0x80)
            text = f"[rsp + {d:#x}]" if d else "[rsp]"
        elif mode == "riz":
            # A SIB byte whose index field is 100b (no REX.X): no index, whatever the scale
            # (SDM Vol. 2A Table 2-3); capstone and keystone spell it riz, eiz with 0x67.
            b = r.choice(bases + [RSP])
            needs = b >= 8
            d = r.choice((0, r.randint(-128, 127))) if b != RSP else r.randrange(0, 0x80)
            names, no_index = (R32, "eiz") if b != RSP and r.random() < 0.3 else (R64, "riz")
            text = f"[{names[b]} + {no_index}*{r.choice((1, 2, 4, 8))}{self._disp(d)}]"
        elif mode.startswith("base"):
            b = r.choice(bases)
            needs = b >= 8
            d = {"base": 0, "base_d8": r.randint(-128, 127),
                 "base_d32": r.choice((1, -1)) * r.randrange(0x80, 0x300)}[mode]
            text = f"[{R64[b]}{self._disp(d)}]"
        elif mode == "isd":
            x = r.choice(idxs)
            needs = x >= 8
            text = f"[{R64[x]}*{r.choice((1, 2, 4, 8))} + {DATA + r.randrange(0x500, 0x1B00):#x}]"
        else:
            b, x = r.choice(bases), r.choice(idxs)
            needs = b >= 8 or x >= 8
            names = R32 if mode == "addr32" else R64
            d = r.choice((0, r.randint(-128, 127), r.choice((1, -1)) * r.randrange(0x80, 0x300)))
            text = f"[{names[b]} + {names[x]}*{r.choice((1, 2, 4, 8))}{self._disp(d)}]"
        return Opnd(pre + text, "mem", needs), None

    @staticmethod
    def _disp(d: int) -> str:
        return "" if d == 0 else (f" + {d:#x}" if d > 0 else f" - {-d:#x}")

    def rm(self, kind: str, size: int, write: bool, rex: bool = True, high: bool = True):
        """(operand, rip target or None) for 'r' or 'm'."""
        if kind == "r":
            return self.reg(size, write, rex, high), None
        return self.mem(size, rex)

    def pair(self, size: int, k0: str, k1: str, write0: bool, write1: bool = False):
        """Two operands, avoiding high-byte registers next to anything that needs REX."""
        while True:
            a, ta = self.rm(k0, size, write0)
            if k0 == k1 == "r" and (not write1 or a.reg in self.writable) and self.rng.random() < 0.15:
                return a, a, None                  # xor eax, eax; sub r, r; cmp r, r ...
            b, tb = self.rm(k1, size, write1, rex=not a.high, high=not a.rex)
            if not (b.high and a.rex) and not (a.high and b.rex):
                return a, b, ta if ta is not None else tb

    # --- emission with static flag tracking ---

    def emit(self, text: str = "", target=None, raw: bytes = b"", reads: int = 0,
             defines: int = 0, undef: int = 0, into=None) -> None:
        if reads & self.undef:
            self.definer(into)
        (self.items if into is None else into).append(Ins(text, raw, target))
        self.undef = (self.undef & ~defines) | undef

    def definer(self, into=None) -> None:
        """A CMP: defines all six arithmetic flags. Often of equal or adjacent values,
        where the signed/unsigned conditions change their answer."""
        r = self.rng
        out = self.items if into is None else into
        s = r.choice(self.SIZES)
        a = self.reg(s)
        k = r.random()
        if k < 0.2:
            text = f"cmp {a.text}, {a.text}"
        elif k < 0.5 and not a.high:
            w = self.reg(s, True, high=False)
            out.append(Ins(f"mov {w.text}, {a.text}"))
            if r.random() < 0.6:
                out.append(Ins(f"{r.choice(('add', 'sub'))} {w.text}, 1"))
            text = f"cmp {a.text}, {w.text}" if r.random() < 0.5 else f"cmp {w.text}, {a.text}"
        elif k < 0.7:
            b = self.reg(s, rex=not a.high, high=not a.rex)
            text = f"cmp {a.text}, {b.text}"
        else:
            text = f"cmp {a.text}, {self.imm(s)}"
        out.append(Ins(text))
        self.undef = 0

    # --- families ---

    def gen(self, form: tuple, into=None) -> None:
        getattr(self, "f_" + form[0])(*form[1:], into=into)

    def f_alu(self, mn, s, p, into=None):
        writes = mn not in ("cmp", "test")
        reads = CF if mn in ("adc", "sbb") else 0
        eff = FIXED_EFFECT[mn]
        if p in ("rr", "rm", "mr"):
            k0, k1 = p
            a, b, t = self.pair(s, k0, k1, writes)
            text = f"{mn} {a.text}, {b.text}"
        elif p == "ai" and (RAX in self.writable or not writes):
            t = None
            text = f"{mn} {REGS[s][RAX]}, {self.imm(s)}"
        else:
            a, t = self.rm("r" if p == "ai" else p[0], s, writes)
            text = f"{mn} {a.text}, {self.imm8s() if p.endswith('8') else self.imm(s)}"
        self.emit(text, t, reads=reads, defines=eff[0], undef=eff[1], into=into)

    def f_unary(self, mn, s, k, into=None):
        a, t = self.rm(k, s, True)
        eff = FIXED_EFFECT.get(mn, (0, 0))
        self.emit(f"{mn} {a.text}", t, defines=eff[0], undef=eff[1], into=into)

    def f_shift(self, mn, s, k, c, into=None):
        a, t = self.rm(k, s, True)
        reads = CF if mn in ("rcl", "rcr") else 0
        bits = s * 8
        if c == "1":
            count, ctext = 1, "1"
        elif c == "imm":
            count = self.rng.choice((0, 1, 2, bits - 1, bits, bits + 1, self.rng.randrange(0, 64),
                                     self.rng.randrange(64, 256)))
            ctext = str(count)
        else:
            if RCX in self.writable and self.rng.random() < 0.5 and not (a.kind == "reg" and a.reg == RCX):
                v = self.rng.choice((0, 1, 2, bits - 1, bits, bits + 1, self.rng.randrange(256)))
                self.emit(f"mov cl, {v:#x}", into=into)
            count, ctext = None, "cl"
        if count is None:
            undef = AF | OF | (CF if mn in ("shl", "sal", "shr") and s <= 2 else 0)
            defines = 0
        else:
            defines, undef = shift_effect(mn, s, count & (0x3F if s == 8 else 0x1F))
        self.emit(f"{mn} {a.text}, {ctext}", t, reads=reads, defines=defines, undef=undef, into=into)

    def f_mov(self, s, p, into=None):
        if p in ("rr", "rm", "mr"):
            a, b, t = self.pair(s, p[0], p[1], True)
            self.emit(f"mov {a.text}, {b.text}", t, into=into)
        elif p in ("ri", "mi"):
            a, t = self.rm(p[0], s, True)
            self.emit(f"mov {a.text}, {self.imm(s)}", t, into=into)
        elif p == "imm64":
            a = self.reg(8, True)
            self.emit(f"movabs {a.text}, {self.value(8):#x}", into=into)
        else:
            if RAX not in self.writable and p == "moffs_load":
                return self.f_mov(s, "rm", into)
            addr = DATA + self.rng.randrange(0, DATA_SIZE - 8)
            m = f"{PTR[s]} ptr [{addr:#x}]"
            acc = REGS[s][RAX]
            self.emit(f"mov {acc}, {m}" if p == "moffs_load" else f"mov {m}, {acc}", into=into)

    def f_xchg(self, s, p, into=None):
        if p == "r8d_eax":
            if RAX in self.writable and 8 in self.writable:
                self.emit(raw=b"\x41\x90", into=into)       # not a NOP: xchg r8d, eax
            return
        if p == "same":
            a = self.reg(s, True)
            self.emit(f"xchg {a.text}, {a.text}", into=into)
            return
        a, b, t = self.pair(s, "r", p[1], True, True)
        if self.rng.random() < 0.5:
            a, b = b, a
        self.emit(f"xchg {a.text}, {b.text}", t, into=into)

    def f_ext(self, mn, s, ss, k, into=None):
        d = self.reg(s, True)
        b, t = self.rm(k, ss, False, rex=not d.high, high=not d.rex)
        self.emit(f"{mn} {d.text}, {b.text}", t, into=into)

    def f_movsxd(self, k, into=None):
        d = self.reg(8, True)
        b, t = self.rm(k, 4, False)
        self.emit(f"movsxd {d.text}, {b.text}", t, into=into)

    def f_lea(self, s, into=None):
        d = self.reg(s, True)
        m, t = self.mem(s, ptr=False)
        self.emit(f"lea {d.text}, {m.text}", t, into=into)

    def f_cmov(self, cc, s, k, into=None):
        if self.rng.random() < 0.5:
            self.definer(into)
        d = self.reg(s, True)
        b, t = self.rm(k, s, False)
        self.emit(f"cmov{cc} {d.text}, {b.text}", t, reads=CC_READS[cc], into=into)

    def f_setcc(self, cc, k, into=None):
        r = self.rng
        if r.random() < 0.5:
            self.definer(into)
        if k == "mem":
            a, t = self.mem(1)
        else:
            pool = {"low": [i for i in self.writable if i < 4],
                    "high": [i for i in self.writable if i < 4],
                    "rex": [i for i in self.writable if i >= 4]}[k]
            if not pool:
                return self.f_setcc(cc, "mem", into)
            i = r.choice(pool)
            a = Opnd(HIGH8[i] if k == "high" else R8[i], "reg")
            t = None
        self.emit(f"set{cc} {a.text}", t, reads=CC_READS[cc], into=into)

    def f_bt(self, mn, s, p, into=None):
        eff = FIXED_EFFECT[mn]
        if p == "mr":
            m, t = self.mem(s)
            off = self.reg(s, True)
            self.emit(f"mov {off.text}, {hexs(self.rng.randint(-0x800, 0x800) & ((1 << s * 8) - 1))}",
                      into=into)
            text = f"{mn} {m.text}, {off.text}"
        elif p == "rr":
            a, b, t = self.pair(s, "r", "r", mn != "bt")
            text = f"{mn} {a.text}, {b.text}"
        else:
            a, t = self.rm(p[0], s, mn != "bt")
            text = f"{mn} {a.text}, {self.imm8s()}"     # keystone wants imm8 signed here
        self.emit(text, t, defines=eff[0], undef=eff[1], into=into)

    def f_bitscan(self, mn, s, k, into=None):
        """bsf bsr tzcnt lzcnt popcnt, often of a zero source (random values rarely are)."""
        d = self.reg(s, True)
        zero = self.rng.random() < 0.3
        if k == "r":
            b, t = self.reg(s, zero), None
        else:
            b, t = self.mem(s)
        if zero:
            self.emit(f"mov {b.text}, 0", t, into=into)
        if s == 4 and mn in ("bsf", "bsr"):
            # A zero source leaves the destination unmodified (SDM), its upper half too;
            # unicorn clears that half. Zero it first so both agree.
            self.emit(f"mov {d.text}, {d.text}", into=into)
        eff = FIXED_EFFECT[mn]
        self.emit(f"{mn} {d.text}, {b.text}", t, defines=eff[0], undef=eff[1], into=into)

    def f_bswap(self, s, into=None):
        self.emit(f"bswap {self.reg(s, True).text}", into=into)

    def f_xadd(self, s, k, lock, into=None):
        a, b, t = self.pair(s, k, "r", True, True)
        self.emit(f"{'lock ' if lock else ''}xadd {a.text}, {b.text}", t, defines=ARITH, into=into)

    def f_cmpxchg(self, s, k, lock, into=None):
        """Half the time the accumulator is first made equal to the destination."""
        acc = REGS[s][RAX]
        a, b, t = self.pair(s, k, "r", True)
        if self.rng.random() < 0.5 and a.text != acc:
            self.emit(f"mov {acc}, {a.text}", t, into=into)
        if s == 4:
            # Hardware writes only the register the outcome names; unicorn also
            # zero-extends the other one. Clear both upper halves so both agree.
            self.emit("mov eax, eax", into=into)
            if a.kind == "reg":
                self.emit(f"mov {a.text}, {a.text}", into=into)
        self.emit(f"{'lock ' if lock else ''}cmpxchg {a.text}, {b.text}", t, defines=ARITH, into=into)

    def f_shiftd(self, mn, s, k, c, into=None):
        r = self.rng
        if k == "m" and c == "imm":
            # unicorn's QEMU forgets the immediate when it works out a RIP-relative
            # address for SHLD/SHRD imm8 (one byte short), so no RIP-relative operand here.
            a, t = self.mem(s, rip=False)
        else:
            a, t = self.rm(k, s, True)
        b = self.reg(s)
        bits = s * 8
        if c == "imm":
            count = r.choice((0, 1, 2, bits - 1, bits, bits + 1, r.randrange(64), r.randrange(17, 32)))
            defines, undef = shiftd_effect(s, count & (0x3F if s == 8 else 0x1F))
            ctext = str(count)
        else:
            if RCX in self.writable and r.random() < 0.6 and not (a.kind == "reg" and a.reg == RCX):
                v = r.choice((0, 1, 2, bits - 1, bits, bits + 1, r.randrange(17, 32), r.randrange(256)))
                self.emit(f"mov cl, {v:#x}", into=into)
            defines, undef, ctext = 0, ARITH if s == 2 else AF | OF, "cl"
        self.emit(f"{mn} {a.text}, {b.text}, {ctext}", t, defines=defines, undef=undef, into=into)

    def f_enter(self, level, into=None):
        """ENTER, usually followed by its LEAVE; RBP points into the stack for a level
        above 1 (ENTER copies frame pointers from below it)."""
        r = self.rng
        n = {"0": 0, "1": 1, "n": r.choice((2, 3, r.randrange(4, 32)))}[level]
        alloc = r.choice((0, 8, 0x10, r.randrange(0x100), r.randrange(0x100, 0x200)))
        if n > 1 or r.random() < 0.3:
            self.emit(f"lea rbp, [rsp{self._disp(r.randrange(-0x40, 0x100))}]", into=into)
        self.emit(f"enter {alloc:#x}, {n}", into=into)
        if r.random() < 0.7:
            self.emit("leave", into=into)

    def f_leave(self, s, into=None):
        """LEAVE (66h: pops BP only); RBP is first pointed near RSP so RSP stays in the stack."""
        sp, bp = REGS[self.WORD][RSP], REGS[self.WORD][RBP]
        self.emit(f"lea {bp}, [{sp}{self._disp(self.rng.randrange(-0x40, 0x41))}]", into=into)
        self.emit(raw=b"\x66\xc9" if s == 2 else b"\xc9", into=into)

    def f_mul(self, mn, s, k, into=None):
        a, t = self.rm(k, s, False)
        self.emit(f"{mn} {a.text}", t, defines=CF | OF, undef=SF | ZF | AF | PF, into=into)

    def f_imul2(self, s, k, into=None):
        d = self.reg(s, True)
        b, t = self.rm(k, s, False)
        self.emit(f"imul {d.text}, {b.text}", t, defines=CF | OF, undef=SF | ZF | AF | PF, into=into)

    def f_imul3(self, s, k, i, into=None):
        d = self.reg(s, True)
        b, t = self.rm(k, s, False)
        imm = self.imm8s() if i == "imm8" else self.imm(min(s, 4) if s < 8 else 8)
        self.emit(f"imul {d.text}, {b.text}, {imm}", t, defines=CF | OF, undef=SF | ZF | AF | PF,
                  into=into)

    def f_div(self, mn, s, k, into=None):
        r = self.rng
        bits = s * 8
        lo, hi = (("ax", None) if s == 1 else (REGS[s][RAX], REGS[s][RDX]))
        # the divisor: never a register of the dividend (that always overflows, or fixes it)
        if k == "r":
            while True:
                src, t = self.reg(s, True), None
                if src.reg not in ((RAX,) if s == 1 else (RAX, RDX)):
                    break
        else:
            src, t = self.mem(s)
        while True:
            if mn == "div":
                d = self.value(s) or 1
                h = r.randrange(d) if r.random() < 0.8 else min(d - 1, r.randrange(4))
                n = h << bits | r.getrandbits(bits)
            else:
                d = self.value(s)
                d = (d - (1 << bits) if d >> (bits - 1) else d) or -1
                q = r.choice((r.randrange(-(1 << (bits - 1)), 1 << (bits - 1)), r.randrange(-4, 4),
                              (1 << (bits - 1)) - 1, -(1 << (bits - 1))))
                rem = r.randrange(abs(d))
                n = q * d
                n += -rem if n < 0 else rem
            if k == "m" and s == 8:
                d_sx = d - (1 << 64) if d >> 63 else d
                if not -(1 << 31) <= d_sx < (1 << 31):
                    continue             # only imm32 can be stored to memory in one MOV
            if _divides(mn, s, n & ((1 << 2 * bits) - 1), d & ((1 << bits) - 1)):
                break
        n &= (1 << 2 * bits) - 1
        mask = (1 << bits) - 1
        if s == 1:
            self.emit(f"mov ax, {n:#x}", into=into)
        else:
            self.emit(f"{'movabs' if s == 8 else 'mov'} {lo}, {n & mask:#x}", into=into)
            self.emit(f"{'movabs' if s == 8 else 'mov'} {hi}, {n >> bits:#x}", into=into)
        if k == "r":
            self.emit(f"{'movabs' if s == 8 else 'mov'} {src.text}, {d & mask:#x}", into=into)
        else:
            dv = d & mask
            if s == 8:
                dv = d - (1 << 64) if d >> 63 else d
                self.emit(f"mov {src.text}, {hexs(dv)}", t, into=into)
            else:
                self.emit(f"mov {src.text}, {dv:#x}", t, into=into)
        self.emit(f"{mn} {src.text}", t, defines=0, undef=ARITH, into=into)

    def f_implicit(self, mn, into=None):
        self.emit(mn, into=into)

    def f_push(self, s, k, into=None):
        if k in ("imm8", "imm32"):
            self.emit(f"push {self.imm8s() if k == 'imm8' else self.imm(8)}", into=into)
        else:
            a, t = self.rm(k, s, False)
            self.emit(f"push {a.text}", t, into=into)

    def f_pop(self, s, k, into=None):
        a, t = self.rm(k, s, True)
        self.emit(f"pop {a.text}", t, into=into)

    def f_sal6(self, s, c, into=None):
        """SAL's own encoding (/6; assemblers emit SHL's /4)."""
        pool = [i for i in self.writable if i < (4 if s == 1 else 8)]
        if not pool:
            return
        i = self.rng.choice(pool)
        pre = {1: b"", 2: b"\x66", 4: b"", 8: b"\x48"}[s]
        op = {"1": 0xD0, "cl": 0xD2, "imm": 0xC0}[c] + (s > 1)
        count = {"1": 1, "cl": None, "imm": self.rng.randrange(64)}[c]
        code = pre + bytes([op, 0xF0 | i]) + (bytes([count]) if c == "imm" else b"")
        if count is None:
            self.emit(raw=code, defines=0, undef=AF | OF | (CF if s <= 2 else 0), into=into)
        else:
            d, u = shift_effect("sal", s, count & (0x3F if s == 8 else 0x1F))
            self.emit(raw=code, defines=d, undef=u, into=into)

    def f_push16i(self, n, into=None):
        """16-bit PUSH imm (66 6A ib / 66 68 iw): keystone has no spelling for it."""
        v = self.rng.getrandbits(8 * n)
        self.emit(raw=(b"\x66\x6a" if n == 1 else b"\x66\x68") + v.to_bytes(n, "little"), into=into)

    def f_pop_rsp(self, s, into=None):
        """POP RSP / POP SP: RSP takes the popped value (pushed here so it stays in the stack)."""
        w = self.reg(s, True)
        d = self.rng.randrange(-0x80, 0x80, 2 if s == 2 else self.WORD)
        self.emit(f"lea {w.text}, [{REGS[self.WORD][RSP]}{self._disp(d)}]", into=into)
        self.emit(f"push {w.text}", into=into)
        self.emit(f"pop {REGS[s][RSP]}", into=into)

    def f_pushfq(self, into=None):
        """PUSHFQ (PUSHFD in 32-bit code)."""
        self.emit("pushfq" if self.WORD == 8 else "pushfd", reads=ARITH, into=into)

    def f_popfq(self, into=None):
        r = self.rng
        v = 0x2 | r.getrandbits(12) & ARITH | r.choice((0, DF))
        # reserved bits (ignored) and the system bits POPF may change at CPL 0 (not TF)
        v |= r.choice((0, 0x8 | 0x20 | 0x8000, 0x200, 0x3000 | 0x4000, 0x40000 | 0x200000))
        if r.random() < 0.5:
            self.emit(f"push {v:#x}", into=into)
        else:
            a = self.reg(self.WORD, True)
            self.emit(f"mov {REGS[4][a.reg]}, {v:#x}", into=into)
            self.emit(f"push {a.text}", into=into)
        self.emit("popfq" if self.WORD == 8 else "popfd", defines=ARITH, into=into)

    def f_nop(self, into=None):
        self.emit("nop", into=into)

    def f_nop_m(self, into=None):
        self.emit(raw=self.rng.choice(NOP_M), into=into)

    def f_pause(self, into=None):
        self.emit("pause", into=into)

    def f_cld(self, into=None):
        self.emit("cld", into=into)

    def f_std(self, into=None):
        self.emit("std", into=into)

    def body(self, push: bool = True) -> list:
        """One or two simple instructions for the inside of a branch snippet (no PUSH in a
        called body: its RET would return to the pushed value)."""
        out: list = []
        simple = [f for f in self.FORMS if f[0] in SIMPLE and (push or f[0] != "push")]
        for _ in range(self.rng.randint(1, 2)):
            self.gen(self.rng.choice(simple), into=out)
        return out

    def branch(self, op: str, reads: int, into=None, prefix: bytes = b"", via: str = "",
               setup: tuple = (), near: bool = False) -> None:
        if reads & self.undef:
            self.definer(into)
        before = self.undef
        b = Branch(op, self.body(), prefix, via, setup, near)
        self.undef |= before                       # the body may be skipped
        (self.items if into is None else into).append(b)

    def f_jcc(self, cc, how, into=None):
        """how: 0 branch on whatever set the flags, 1 after a CMP, 2 after a CMP of fresh values."""
        if how == 1:
            self.definer(into)
        elif how == 2:
            s = self.rng.choice(self.SIZES)
            w = self.reg(s, True)
            self.emit(f"{'movabs' if s == 8 else 'mov'} {w.text}, {self.value(s):#x}", into=into)
            self.emit(f"cmp {w.text}, {self.imm(s)}", defines=ARITH, into=into)
        self.branch(f"j{cc}", CC_READS[cc], into)

    def f_jmp(self, into=None):
        self.branch("jmp", 0, into)

    def f_loop(self, mn, a32, n, into=None):
        """n: the count put in RCX first (None: whatever RCX holds)."""
        if n is not None:
            n |= self.rng.choice((0, 0x100000000, 0xFFFFFFFF00000000))   # upper half, for a32
            self.emit(f"movabs rcx, {n:#x}" if n > 0xFFFFFFFF else f"mov ecx, {n}", into=into)
        self.branch(mn, ZF if mn in ("loope", "loopne") else 0, into, b"\x67" if a32 else b"")

    def f_call(self, n, into=None):
        c = Call(self.body(push=False), n)
        (self.items if into is None else into).append(c)

    def point(self, i: int, addr: int, into=None) -> None:
        """Register i = addr (RIP-relative, so the listing shows the target)."""
        self.emit(f"lea {R64[i]}, [rip{{disp}}]", addr, into=into)

    def f_string(self, op, s, rep, df, a32, into=None):
        r = self.rng
        n = r.choice((0, 1, 2, 3, r.randrange(4, 12))) if rep else 1
        if rep == "rep0":
            rep, n = "rep", 0
        span = 12 * 8

        def where():
            return DATA + r.randrange(0x100 + span, DATA_SIZE - 0x100 - span)

        dst = where()
        src = r.choice((dst + r.randint(-16, 16), where()))        # overlapping or not
        if a32:
            # 32-bit address size: only EDI/ESI/ECX count, so put garbage above them
            self.emit(f"movabs rdi, {r.getrandbits(32) << 32 | dst:#x}", into=into)
            if op == "movs":
                self.emit(f"movabs rsi, {r.getrandbits(32) << 32 | src:#x}", into=into)
            self.emit(f"movabs rcx, {r.getrandbits(32) << 32 | n:#x}", into=into)
        else:
            self.point(RDI, dst, into)
            if op == "movs":
                self.point(RSI, src, into)
            self.emit(f"mov ecx, {n}", into=into)
        self.emit("std" if df else "cld", into=into)
        code = (b"\x67" if a32 else b"") + {"": b"", "rep": b"\xf3", "repne": b"\xf2"}[rep]
        code += {1: b"", 2: b"\x66", 4: b"", 8: b"\x48"}[s]
        code += bytes([{"stos": 0xAA, "movs": 0xA4}[op] + (s > 1)])
        self.emit(raw=code, into=into)
        if r.random() < 0.5:
            self.emit("cld", into=into)


def _divides(mn: str, s: int, n: int, d: int) -> bool:
    """True if div/idiv of the 2s-byte dividend n by the s-byte divisor d does not raise #DE."""
    bits = s * 8
    if d == 0:
        return False
    if mn == "div":
        return n // d < (1 << bits)
    ns = n - (1 << 2 * bits) if n >> (2 * bits - 1) else n
    ds = d - (1 << bits) if d >> (bits - 1) else d
    q = abs(ns) // abs(ds) * (1 if (ns < 0) == (ds < 0) else -1)
    return -(1 << (bits - 1)) <= q < (1 << (bits - 1))


# ---------------------------------------------------------------------------
# Layout (keystone, one instruction at a time so RIP-relative targets are exact)
# ---------------------------------------------------------------------------

def _asm1(ins: Ins, addr: int, assemble=asm) -> bytes:
    if ins.raw:
        return ins.raw
    if ins.rip_target is None:
        code = assemble(ins.text, addr)
    else:
        n = len(assemble(ins.text.format(disp=""), addr))
        code = assemble(ins.text.format(disp=Generator._disp(ins.rip_target - (addr + n))), addr)
        assert len(code) == n, ins.text
    assert code, f"keystone could not assemble {ins.text!r}"
    return code


def _setup(it, addr: int, target: int, assemble) -> bytes:
    """An indirect transfer's setup instructions with the target filled in (their length
    does not depend on it: imm32 operands)."""
    out = b""
    for text in it.setup:
        out += _asm1(Ins(text.format(target=f"{target:#x}")), addr + len(out), assemble)
    return out


def layout(items: list, addr: int, assemble=asm) -> bytes:
    out = b""
    for it in items:
        a = addr + len(out)
        if isinstance(it, Ins):
            out += _asm1(it, a, assemble)
        elif isinstance(it, Branch):
            pre = len(_setup(it, a, a, assemble))
            at = a + pre + len(it.prefix)
            br = assemble(f"{it.op} {it.via or hex(at)}", at)     # rel8 (or the indirect form)
            if it.near:
                br = b"\xe9" if it.op == "jmp" else bytes([0x0F, 0x80 + CCS.index(it.op[1:])])
            n = len(br) + 4 * it.near
            body = layout(it.body, at + n, assemble)
            end = at + n + len(body)
            setup = _setup(it, a, end, assemble)
            if it.near:
                br += (end - (at + n)).to_bytes(4, "little")
            elif not it.via:
                br = assemble(f"{it.op} {end:#x}", at)
            assert len(setup) == pre and len(br) == n, (it.op, br.hex())
            out += setup + it.prefix + br + body
        else:
            pre = len(_setup(it, a, a, assemble))
            call = assemble(f"call {it.via or hex(a + pre + 7)}", a + pre)
            body_at = a + pre + len(call) + 2
            body = layout(it.body, body_at, assemble)
            ret = assemble(f"ret {it.ret_imm}" if it.ret_imm else "ret", body_at + len(body))
            end = body_at + len(body) + len(ret)
            setup = _setup(it, a, body_at, assemble)
            if not it.via:
                call = assemble(f"call {body_at:#x}", a)
            jmp = assemble(f"jmp {end:#x}", a + pre + len(call))
            assert len(setup) == pre and (it.via or len(call) == 5) and len(jmp) == 2
            out += setup + call + jmp + body + ret
    return out


@dataclass(frozen=True, eq=False)
class Mode:
    """A code size under test: how sequences are made, how unicorn runs them and how the
    interpreter is put in that mode. 64-bit here; test_differential32.py adds the 32-bit ones."""
    name: str
    generator: type
    forms: tuple
    assemble: object              # (source, address) -> bytes
    bits: int                     # code size, for the decoder
    uc_mode: int
    names: tuple                  # the GPRs compared, in encoding order
    ip: int                       # unicorn's instruction pointer and flags registers
    flags: int
    seed: int = SEED
    setup: object = None          # (vm, cpu) -> None: the interpreter's mode after boot

    @property
    def gprs(self) -> list:
        return [getattr(U, f"UC_X86_REG_{n.upper()}") for n in self.names]

    @property
    def mask(self) -> int:
        """The bits of each GPR compared."""
        return (1 << 8 * self.generator.WORD) - 1


Generator.FORMS = FORMS
MODE64 = Mode("64-bit", Generator, FORMS, asm, 64, UC_MODE_64, R64, U.UC_X86_REG_RIP,
              U.UC_X86_REG_RFLAGS)


def make_seq(batch: int, i: int, mode: Mode = MODE64) -> Seq:
    k = batch * PER_BATCH + i
    rng = random.Random(mode.seed * 100003 + k)
    forms = mode.forms
    forced = [forms[(2 * k) % len(forms)], forms[(2 * k + 1) % len(forms)]]
    g = mode.generator(rng, forced)
    picks = forced + [rng.choice(forms) for _ in range(rng.randint(2, 5))]
    rng.shuffle(picks)
    for f in picks:
        if set(IMPLICIT.get(f[0], ())) & set(g.bases + g.indexes):
            continue
        g.gen(f)
    addr = CODE + i * SLOT
    code = layout(g.items, addr, mode.assemble) + b"\xf4"   # hlt: the interpreter stops there
    assert len(code) <= SLOT, len(code)
    return Seq(k, addr, code, g.regs, g.rflags, rng.randbytes(DATA_SIZE),
               rng.randbytes(STACK_HI - STACK_CMP), picks)


# ---------------------------------------------------------------------------
# The two machines
# ---------------------------------------------------------------------------

_DECODER = Decoder()


def listing(seq: Seq, bits: int = 64) -> list:
    """Decoded instructions of the sequence, in address order."""
    out, off = [], 0
    while off < len(seq.code):
        d = _DECODER.decode(seq.code[off:], seq.addr + off, bits)
        assert d is not None, seq.code[off:].hex()
        out.append(d)
        off += d.length
    return out


@dataclass
class State:
    regs: list
    rip: int
    rflags: int
    data: bytes
    stack: bytes
    undef: int = 0              # arithmetic flags undefined at this point
    trace: list = field(default_factory=list)    # (Decoded, RCX before, RFLAGS before a string op)
    steps: list = field(default_factory=list)    # (Decoded, GPRs, RIP, RFLAGS, undefined) after each


def uc_new(mode: Mode = MODE64) -> Uc:
    uc = Uc(UC_ARCH_X86, mode.uc_mode)
    uc.mem_map(CODE, (PER_BATCH * SLOT + 0xFFF) & ~0xFFF)
    uc.mem_map(STACK_LO, STACK_HI - STACK_LO)
    uc.mem_map(DATA, DATA_SIZE)
    return uc


def uc_load(uc: Uc, seq: Seq, mode: Mode = MODE64) -> None:
    uc.mem_write(seq.addr, seq.code)
    uc.mem_write(DATA, seq.data)
    uc.mem_write(STACK_CMP, seq.stack)
    for reg, v in zip(mode.gprs, seq.regs):
        uc.reg_write(reg, v)
    uc.reg_write(mode.flags, seq.rflags)


def uc_state(uc: Uc, mode: Mode = MODE64) -> State:
    return State([uc.reg_read(r) for r in mode.gprs], uc.reg_read(mode.ip),
                 uc.reg_read(mode.flags), bytes(uc.mem_read(DATA, DATA_SIZE)),
                 bytes(uc.mem_read(STACK_CMP, STACK_HI - STACK_CMP)))


def uc_step(uc: Uc, rip: int, end: int, mode: Mode = MODE64) -> int:
    """Execute one instruction (all iterations of a REP string instruction)."""
    while True:
        uc.emu_start(rip, end, count=1)
        nrip = uc.reg_read(mode.ip)
        if nrip != rip:
            return nrip


def uc_run(uc: Uc, seq: Seq, decoded: dict, mode: Mode = MODE64) -> State:
    uc_load(uc, seq, mode)
    end = seq.addr + len(seq.code) - 1          # the HLT
    rip, undef, trace = seq.addr, 0, []
    steps = []
    cx = mode.gprs[RCX]
    while rip != end:
        d = decoded[rip]
        rcx = uc.reg_read(cx)
        fl = uc.reg_read(mode.flags) if d.mnemonic[:4] in ("stos", "movs") else None
        trace.append((d, rcx, fl))
        rip = uc_step(uc, rip, end, mode)
        defined, und = flag_effect(d, rcx)
        undef = (undef & ~(defined | und)) | und
        *regs, rflags = uc.reg_read_batch(mode.gprs + [mode.flags])
        steps.append((d, regs, rip, rflags, undef))
        assert len(trace) < 500, "runaway sequence"
    st = uc_state(uc, mode)
    st.rip = end + 1                            # where our HLT leaves RIP
    st.undef, st.trace, st.steps = undef, trace, steps
    return st


def our_load(vm, cpu, seq: Seq) -> None:
    vm.write_gpa(seq.addr, seq.code)
    vm.write_gpa(DATA, seq.data)
    vm.write_gpa(STACK_CMP, seq.stack)
    cpu.r[:] = seq.regs + [0] * (16 - len(seq.regs))
    cpu.rip = seq.addr
    cpu.set_rflags(seq.rflags)
    cpu.halted = False
    cpu.shutdown = ""            # a failed earlier sequence may have triple-faulted


def _our_regs(cpu, mode: Mode) -> list:
    return [v & mode.mask for v in cpu.r[:len(mode.names)]]


def our_state(vm, cpu, mode: Mode = MODE64) -> State:
    return State(_our_regs(cpu, mode), cpu.rip, peek_rflags(cpu), vm.read_gpa(DATA, DATA_SIZE),
                 vm.read_gpa(STACK_CMP, STACK_HI - STACK_CMP))


def diff(ours: State, ref: State, undef: int, memory: bool = True, names: tuple = R64) -> list[str]:
    out = []
    for name, a, b in zip(names, ours.regs, ref.regs):
        if a != b:
            out.append(f"{name}: ours {a:#018x}  unicorn {b:#018x}")
    if ours.rip != ref.rip:
        out.append(f"rip: ours {ours.rip:#x}  unicorn {ref.rip:#x}")
    mask = ~undef & 0x3C7FD7          # every architectural RFLAGS bit but RF/VM, less undefined ones
    if (ours.rflags ^ ref.rflags) & mask:
        bad = [n for n, b in FLAG_NAMES if (ours.rflags ^ ref.rflags) & mask & b]
        out.append(f"rflags {bad or 'system bits'}: ours {ours.rflags:#x}  unicorn {ref.rflags:#x}"
                   f"  (undefined, not compared: {undef:#x})")
    if memory:
        for name, base, a, b in (("data", DATA, ours.data, ref.data), ("stack", STACK_CMP, ours.stack, ref.stack)):
            if a != b:
                idx = [j for j in range(len(a)) if a[j] != b[j]]
                j = idx[0]
                out.append(f"{name} memory differs at {len(idx)} bytes, first {base + j:#x}: "
                           f"ours {a[j:j + 8].hex()}  unicorn {b[j:j + 8].hex()}")
    return out


def show(seq: Seq, decoded: list, names: tuple = R64) -> str:
    lines = [f"sequence #{seq.index} (forms {seq.forms})",
             "start: " + " ".join(f"{n}={v:#x}" for n, v in zip(names, seq.regs)) + f" rflags={seq.rflags:#x}"]
    for d in decoded:
        lines.append(f"  {d.address:#x}: {d.raw.hex():<22} {d.text}")
    return "\n".join(lines)


def localize(vm, cpu, uc: Uc, seq: Seq, decoded: dict, mode: Mode = MODE64) -> str:
    """Replay one instruction at a time on both; name the first instruction after which they differ."""
    our_load(vm, cpu, seq)
    uc_load(uc, seq, mode)
    end = seq.addr + len(seq.code) - 1
    rip, undef = seq.addr, 0
    while rip != end:
        d = decoded[rip]
        rcx = uc.reg_read(mode.gprs[RCX])
        urip = uc_step(uc, rip, end, mode)
        run(cpu, 1)
        defined, und = flag_effect(d, rcx)
        undef = (undef & ~(defined | und)) | und
        ref = uc_state(uc, mode)
        ours = our_state(vm, cpu, mode)
        problems = diff(ours, ref, undef, names=mode.names)
        if problems:
            return f"first difference after {d.address:#x} {d.text}:\n    " + "\n    ".join(problems)
        rip = urip
    return "(no difference when single-stepping)"


@lru_cache(maxsize=None)
def batch(b: int, mode: Mode = MODE64):
    """The batch's sequences, their listings and unicorn's results (shared by the tests)."""
    uc = uc_new(mode)
    out = []
    for i in range(PER_BATCH):
        seq = make_seq(b, i, mode)
        dec = listing(seq, mode.bits)
        ref = uc_run(uc, seq, {d.address: d for d in dec}, mode)
        out.append((seq, dec, ref))
    return out


def step_compare(vm, cpu, seq: Seq, ref: State, mode: Mode = MODE64) -> list[str]:
    """Single-step the interpreter; compare GPRs, RIP and the defined flags after each
    instruction (so flags nothing reads later are checked too)."""
    our_load(vm, cpu, seq)
    for d, regs, rip, rflags, undef in ref.steps:
        run(cpu, 1)
        ours = State(_our_regs(cpu, mode), cpu.rip, peek_rflags(cpu), b"", b"")
        problems = diff(ours, State(regs, rip, rflags, b"", b""), undef, memory=False, names=mode.names)
        if problems:
            return [f"after {d.address:#x} {d.text}:"] + problems
    return []


def check_batch(b: int, mode: Mode = MODE64) -> None:
    """Run batch b on the interpreter in one go and in single steps against unicorn's results."""
    vm, cpu = machine(b"\xf4")
    if mode.setup:
        mode.setup(vm, cpu)
    uc = None
    failures = []
    for seq, dec, ref in batch(b, mode):
        # 1. the whole sequence in one run() (basic blocks), compared at the end, memory too
        our_load(vm, cpu, seq)
        try:
            reason = run(cpu, 100_000)
        except KvmdbgError as e:          # an unsupported instruction: one line, not a traceback
            reason = f"error: {e}"
        problems = diff(our_state(vm, cpu, mode), ref, ref.undef, names=mode.names)
        if reason != HALTED:
            problems.insert(0, f"run() stopped with {reason!r} {cpu.shutdown}")
        if problems:
            uc = uc or uc_new(mode)
            try:
                where = localize(vm, cpu, uc, seq, {d.address: d for d in dec}, mode)
            except KvmdbgError as e:
                where = f"single steps stopped: {e}"
            problems = ["at the end:"] + problems + [where]
        else:
            # 2. one instruction at a time, compared after each
            problems = step_compare(vm, cpu, seq, ref, mode)
        if problems:
            failures.append(show(seq, dec, mode.names) + "\n" + "\n    ".join(problems))
            if len(failures) == 3:
                break
    assert not failures, f"{mode.name}:\n" + "\n\n".join(failures)


@pytest.mark.parametrize("b", range(BATCHES))
def test_against_unicorn(b):
    check_batch(b)


# ---------------------------------------------------------------------------
# Coverage: the sequences really contain what the issue asks for
# ---------------------------------------------------------------------------

def _key(d) -> tuple:
    ops = tuple("imm" if o.kind == "imm" else (o.kind, o.size) for o in d.operands)
    return ((d.rep + " " if d.rep else "") + ("lock " if d.lock else "") + d.mnemonic, ops)


def required_keys() -> set:
    """(mnemonic, operands) the sequences must contain, written from the supported list."""
    req = set()

    def add(mn, *ops):
        req.add((mn, ops))

    for s in (1, 2, 4, 8):
        r, m = ("reg", s), ("mem", s)
        for mn in ALU + ("test",):
            add(mn, r, r), add(mn, m, r), add(mn, r, "imm"), add(mn, m, "imm")
            if mn != "test":
                add(mn, r, m)
        for mn in ("inc", "dec", "neg", "not", "mul", "imul", "div", "idiv"):
            add(mn, r), add(mn, m)
        for mn in ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr", "sal"):
            for k in (r, m) if mn != "sal" else (r,):
                add(mn, k, "imm"), add(mn, k, ("reg", 1))
        add("mov", r, r), add("mov", r, m), add("mov", m, r), add("mov", r, "imm"), add("mov", m, "imm")
        add("movabs", r, m), add("movabs", m, r)           # moffs (absolute address)
        add("xchg", r, r), add("xchg", m, r)
        sfx = "bwdq"[(1, 2, 4, 8).index(s)]
        for mn in ("xadd", "cmpxchg"):
            add(mn, r, r), add(mn, m, r), add("lock " + mn, m, r)
        for p in ("", "rep ", "repne "):
            add(f"{p}stos{sfx}", m, r)
            if not (p == "repne " and s == 4):              # capstone shows F2 A5 as plain movsd
                add(f"{p}movs{sfx}", m, m)
    add("movabs", ("reg", 8), "imm")
    for s in (2, 4, 8):
        r, m = ("reg", s), ("mem", s)
        for mn in ("bt", "bts", "btr", "btc"):
            add(mn, r, r), add(mn, r, "imm"), add(mn, m, r), add(mn, m, "imm")
        add("imul", r, r), add("imul", r, m), add("imul", r, r, "imm"), add("imul", r, m, "imm")
        add("lea", r, m)
        for mn in BITSCANS:
            add(mn, r, r), add(mn, r, m)
        for mn in SHIFTDS:
            for k in (r, m):
                add(mn, k, r, "imm"), add(mn, k, r, ("reg", 1))
        if s > 2:
            add("bswap", r)
        for cc in CCS:
            add(f"cmov{cc}", r, r), add(f"cmov{cc}", r, m)
        for ss in (1, 2):
            if ss < s:
                for mn in ("movzx", "movsx"):
                    add(mn, r, ("reg", ss)), add(mn, r, ("mem", ss))
    add("movsxd", ("reg", 8), ("reg", 4)), add("movsxd", ("reg", 8), ("mem", 4))
    for cc in CCS:
        add(f"set{cc}", ("reg", 1)), add(f"set{cc}", ("mem", 1)), add(f"j{cc}", "imm")
    for s in (2, 8):
        add("push", ("reg", s)), add("push", ("mem", s)), add("pop", ("reg", s)), add("pop", ("mem", s))
    add("push", "imm")
    for mn in ("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo", "pushfq", "popfq", "nop", "pause",
               "cld", "std", "ret"):
        add(mn)
    add("nop", ("mem", 4)), add("ret", "imm"), add("enter", "imm", "imm"), add("leave")
    for mn in ("jmp", "call", "loop", "loope", "loopne", "jrcxz", "jecxz"):
        add(mn, "imm")
    return req


@lru_cache(maxsize=None)
def _detail_cs():
    import capstone
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return cs


def _sib_without_index(raw: bytes) -> bool:
    """A memory ModRM with a SIB byte whose index field is 100b and no REX.X (the decoder
    itself drops the pseudo-register, and capstone hides it from some listings)."""
    insn = next(_detail_cs().disasm(raw, 0), None)
    return (insn is not None and insn.modrm >> 6 != 3 and insn.modrm & 7 == 4
            and insn.sib >> 3 & 7 == 4 and not insn.rex & 2)


def _mem_modes(o, d) -> set:
    modes = set()
    if _sib_without_index(d.raw):
        modes.add("sib-no-index " + ("eiz" if d.addr_size == 4 else "riz"))
    if o.base == "rip":
        return {"rip"}
    if d.addr_size == 4:
        modes.add("addr32")
    if not o.base and not o.index:
        modes.add("absolute")
    elif not o.base:
        modes.add(f"index*{o.scale}+disp32")
    elif o.index:
        modes.add(f"base+index*{o.scale}" + ("+disp" if o.disp else ""))
    else:
        modes.add("base" if not o.disp else ("base+disp8" if -128 <= o.disp < 128 else "base+disp32"))
    if o.base:
        modes.add("base=" + o.base)
    if o.index:
        modes.add("index=" + o.index)
    return modes


def test_coverage():
    seqs = [x for b in range(BATCHES) for x in batch(b)]
    assert len(seqs) >= 2000
    keys, modes, regs = set(), set(), set()
    dynamic = set()
    for seq, dec, ref in seqs:
        for d in dec:
            keys.add(_key(d))
            writes = d.mnemonic not in ("cmp", "test", "bt", "push") and d.operands
            for j, o in enumerate(d.operands):
                if o.kind == "mem":
                    modes |= _mem_modes(o, d)
                elif o.kind == "reg":
                    regs.add(o.reg)
                    if j == 0 and writes:
                        regs.add(o.reg + " written")
        trace = ref.trace
        for j, (d, rcx, fl) in enumerate(trace):
            nxt = trace[j + 1][0].address if j + 1 < len(trace) else ref.rip - 1
            mn = d.mnemonic
            if mn[0] == "j" or mn.startswith("loop"):
                if mn != "jmp":
                    dynamic.add((mn, "taken" if nxt != d.address + d.length else "not taken"))
            elif mn in SHIFTS + SHIFTDS and len(d.operands) > 1:
                c = d.operands[-1].imm if d.operands[-1].kind == "imm" else rcx
                c &= 0x3F if d.operands[0].size == 8 else 0x1F
                how = "cl count" if d.operands[-1].kind == "reg" else "imm count"
                dynamic.add((mn, f"{how} " + ("0" if c == 0 else "1" if c == 1 else ">1")))
                if mn in SHIFTDS and d.operands[0].size == 2 and c > 16:
                    dynamic.add((mn, "16-bit count > 16"))
            elif mn in BITSCANS + ("cmpxchg",):
                after = ref.steps[j][3]
                zero = after & (CF if mn in ("tzcnt", "lzcnt") else ZF)
                dynamic.add((mn, ("equal" if zero else "not equal") if mn == "cmpxchg"
                             else "zero source" if zero else "nonzero source"))
            elif mn == "enter":
                level = d.operands[1].imm & 31
                dynamic.add((mn, f"level {level if level < 2 else '>1'}"))
            elif mn == "leave":
                dynamic.add((mn, "16-bit" if d.raw[0] == 0x66 else "64-bit"))
            elif fl is not None and d.rep:
                cnt = rcx & (M64 if d.addr_size == 8 else 0xFFFFFFFF)
                dynamic.add((mn, f"rep count {'0' if cnt == 0 else '>0'} DF={fl >> 10 & 1}"))
    missing = sorted(required_keys() - keys, key=str)
    assert not missing, f"forms never generated: {missing}"
    want_modes = {"rip", "absolute", "addr32", "base", "base+disp8", "base+disp32"}
    want_modes |= {f"base+index*{k}" for k in (1, 2, 4, 8)} | {f"base+index*{k}+disp" for k in (1, 2, 4, 8)}
    want_modes |= {f"index*{k}+disp32" for k in (1, 2, 4, 8)} | {"sib-no-index riz", "sib-no-index eiz"}
    want_modes |= {"base=" + r for r in R64} | {"index=" + r for r in R64 if r != "rsp"}
    assert not want_modes - modes, f"addressing modes never generated: {sorted(want_modes - modes)}"
    want_regs = set(HIGH8) | set(R8[4:]) | {r + " written" for r in HIGH8 + R8[5:]}
    assert not want_regs - regs, f"byte registers never used: {sorted(want_regs - regs)}"
    want_dyn = {(f"j{cc}", t) for cc in CCS for t in ("taken", "not taken")}
    want_dyn |= {(mn, t) for mn in ("loop", "loope", "loopne", "jrcxz", "jecxz") for t in ("taken", "not taken")}
    want_dyn |= {(mn, f"cl count {c}") for mn in ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr")
                 for c in ("0", "1", ">1")}
    want_dyn |= {(f"{op}{sfx}", f"rep count {c} DF={df}") for op in ("stos", "movs") for sfx in "bwdq"
                 for c in ("0", ">0") for df in (0, 1)}
    want_dyn |= {(mn, f"{how} count {c}") for mn in SHIFTDS for how in ("cl", "imm")
                 for c in ("0", "1", ">1")}
    want_dyn |= {(mn, "16-bit count > 16") for mn in SHIFTDS}
    want_dyn |= {(mn, f"{z} source") for mn in BITSCANS for z in ("zero", "nonzero")}
    want_dyn |= {("cmpxchg", "equal"), ("cmpxchg", "not equal"),
                 ("leave", "16-bit"), ("leave", "64-bit")}
    want_dyn |= {("enter", f"level {n}") for n in ("0", "1", ">1")}
    assert not want_dyn - dynamic, f"paths never executed: {sorted(want_dyn - dynamic)}"


# ---------------------------------------------------------------------------
# #DE: division by zero and quotient overflow (no IDT: the vCPU triple-faults)
# ---------------------------------------------------------------------------

DE_CASES = [
    ("div zero 8", "mov ax, 0x1234; xor bl, bl; div bl"),
    ("div zero 16", "xor ecx, ecx; div cx"),
    ("div zero 32", "xor ecx, ecx; div ecx"),
    ("div zero 64", "xor ecx, ecx; div rcx"),
    ("div zero mem", "mov qword ptr [0x200000], 0; div qword ptr [0x200000]"),
    ("idiv zero 32", "xor ecx, ecx; idiv ecx"),
    ("idiv zero 64", "xor ecx, ecx; idiv rcx"),
    ("div overflow 8", "mov ax, 0x0200; mov bl, 2; div bl"),
    ("div overflow 16", "mov dx, 5; mov ax, 0; mov cx, 5; div cx"),
    ("div overflow 32", "mov edx, 1; xor eax, eax; mov ecx, 1; div ecx"),
    ("div overflow 64", "mov rdx, -1; mov rax, -1; mov rcx, 2; div rcx"),
    ("idiv overflow 8", "mov ax, 0xff80; mov bl, 0xff; idiv bl"),           # -128 / -1
    ("idiv overflow 16", "mov dx, 0xffff; mov ax, 0x8000; mov cx, -1; idiv cx"),
    ("idiv overflow 32", "mov edx, -1; mov eax, 0x80000000; mov ecx, -1; idiv ecx"),
    ("idiv overflow 64", "mov rdx, -1; movabs rax, 0x8000000000000000; mov rcx, -1; idiv rcx"),
    ("idiv overflow +", "xor edx, edx; mov eax, 0x80000000; mov ecx, 1; idiv ecx"),  # +2^31 > max
    ("idiv overflow mem", "mov dword ptr [0x200000], 1; mov rdx, 1; xor eax, eax; idiv qword ptr [0x200000]"),
]


@pytest.mark.parametrize("name,source", DE_CASES, ids=[c[0] for c in DE_CASES])
def test_divide_error(name, source):
    vm, cpu = machine(source + "; hlt")
    assert run(cpu, 100) == SHUTDOWN
    assert "#DE" in cpu.shutdown, cpu.shutdown
    # #DE is a fault: RIP stays on the DIV/IDIV and the dividend registers are untouched.
    d = cpu.decoded_at(cpu.rip)
    assert d is not None and d.mnemonic in ("div", "idiv"), (hex(cpu.rip), d)


def test_divide_ok_at_the_limits():
    """The largest quotients that fit do not fault (and give the SDM's results)."""
    vm, cpu = machine("mov dx, 0xff; mov ax, 0xffff; mov cx, 0x100; div cx;"
                      "mov r8, rax; mov r9, rdx;"
                      "mov edx, -1; mov eax, 0x80000001; mov ecx, -1; idiv ecx;"     # -(2^31 - 1) / -1
                      "hlt")
    assert run(cpu, 100) == HALTED, cpu.shutdown
    assert cpu.r[8] & 0xFFFF == 0xFFFF and cpu.r[9] & 0xFFFF == 0xFF
    assert cpu.r[0] & 0xFFFF_FFFF == 0x7FFF_FFFF and cpu.r[2] & 0xFFFF_FFFF == 0


def test_pop_sp_takes_the_upper_bits_of_the_incremented_rsp():
    """SDM POP: the stack pointer is incremented before the popped value is written, so
    POP SP at SP=0xFFFE carries into RSP's upper bits first. (The random sequences keep
    RSP inside the stack window, away from this edge.)"""
    vm, cpu = machine("mov rsp, 0x6fffe; mov word ptr [rsp], 0x1234; pop sp; hlt")
    assert run(cpu, 10) == HALTED, cpu.shutdown
    assert cpu.r[4] == 0x71234


@pytest.mark.parametrize("fault", ["mov rcx, qword ptr [rbx]", "div rsi", "mov qword ptr [rbx], rax"])
def test_fault_inside_a_block_is_as_precise_as_single_steps(fault):
    """A fault after register-only instructions in the same block names its own
    instruction and counts exactly the instructions before it, as single-stepping does."""
    source = ("mov eax, 1; add eax, 2; xor esi, esi; dec eax; movabs rbx, 0x800000000000; "
              f"{fault}; hlt")
    seen = []
    for single in (False, True):
        vm, cpu = machine(source)
        cpu.single_step = single
        assert run(cpu, 100) == SHUTDOWN
        seen.append((cpu.shutdown, cpu.steps, cpu.rip, list(cpu.r)))
    assert seen[0] == seen[1]
    d = machine(source)[1].decoded_at(seen[0][2])
    assert d is not None and d.text.replace(" ", "") == fault.replace(" ", ""), d


LOOP_SOURCE = ("mov ecx, 40; mov rsi, 0x200ff0; l: mov qword ptr [rsi], rcx; add rsi, 0x404; "
               "add rax, rcx; dec ecx; jnz l; hlt")


def _state(cpu):
    return cpu.steps, cpu.rip, list(cpu.r), cpu.get_rflags(), cpu.shutdown


@pytest.mark.parametrize("limit", [1, 2, 5, 6, 7, 12, 33, 34, 35, 36, 37, 38, 100, 150])
def test_looping_block_stops_exactly_at_the_step_limit(limit):
    """A block that jumps back to its own start repeats inside its handler; a run that
    ends partway through must leave the machine exactly where single steps leave it."""
    seen = []
    for single in (False, True):
        vm, cpu = machine(LOOP_SOURCE)
        cpu.single_step = single
        run(cpu, limit)
        seen.append(_state(cpu))
    assert seen[0] == seen[1]


def test_fault_in_a_later_pass_of_a_looping_block_counts_every_pass():
    """The loop's stores walk off the end of RAM, which the boot tables identity-map, in
    its 17th pass: steps, RIP and registers match single-stepping."""
    source = ("mov ecx, 40; mov rsi, 0xffc000; l: add rax, rcx; mov qword ptr [rsi], rcx; "
              "add rsi, 0x400; dec ecx; jnz l; hlt")
    seen = []
    for single in (False, True):
        vm, cpu = machine(source)
        cpu.single_step = single
        assert run(cpu, 1000) == SHUTDOWN
        seen.append(_state(cpu))
    assert seen[0] == seen[1]
    assert seen[0][0] > 5 * 3, "the fault should come several passes in"


@pytest.mark.parametrize("seg,msr", [("fs", 0xC0000100), ("gs", 0xC0000101)])
def test_fs_gs_override_adds_the_segment_base(seg, msr):
    """In 64-bit mode an FS/GS override adds the segment's base (SDM Vol. 3A 3.4.4): with
    the base at 0x200000, seg:[rbx + 8] with rbx = 0x10 is linear address 0x200018."""
    vm, cpu = machine(f"mov ecx, {msr:#x}; mov eax, 0x200000; xor edx, edx; wrmsr; "
                      "mov rbx, 0x10; movabs rax, 0x1122334455667788; mov qword ptr [0x200018], rax; "
                      f"mov rsi, qword ptr {seg}:[rbx + 8]; mov qword ptr {seg}:[rbx], rsi; hlt")
    assert run(cpu, 100) == HALTED, cpu.shutdown
    assert cpu.r[6] == 0x1122334455667788
    assert cpu.rd(0x200010, 8) == 0x1122334455667788


@pytest.mark.parametrize("single", [False, True], ids=["blocks", "single-steps"])
def test_instruction_crossing_into_a_remapped_page_is_fetched_again(single):
    """A 10-byte MOV whose last two bytes sit on the next page: after the guest points that
    page's PTE at another physical page (and INVLPGs it), the instruction must be fetched
    from the new bytes (SDM 4.10.4.1: INVLPG, then the fetch walks again)."""
    first, second, other = 0x100FF8, 0x101000, 0x180000
    pte = 0x4000 + (second >> 12) * 8                # the boot tables' PTE for `second`
    main = asm(f"mov rsi, {first:#x}; call rsi; mov rbx, rax; "
               f"mov qword ptr [{pte:#x}], {other | 3:#x}; invlpg [{second:#x}]; "
               "call rsi; hlt")
    vm, cpu = machine(main)
    # movabs rax, 0x2222111111111111 split 8 + 2 bytes; then ret on the second page.
    vm.write_gpa(first, bytes.fromhex("48b8") + (0x1111111111111111).to_bytes(8, "little")[:6])
    vm.write_gpa(second, bytes.fromhex("1111c3"))
    vm.write_gpa(other, bytes.fromhex("2222c3"))
    cpu.single_step = single
    assert run(cpu, 100) == HALTED, cpu.shutdown
    assert cpu.r[3] == 0x1111111111111111
    assert cpu.r[0] == 0x2222111111111111
