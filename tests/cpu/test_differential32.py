"""Differential test of 32-bit code against unicorn's 32-bit mode (QEMU's TCG).

The 64-bit test's generator, layout and comparison (test_differential.py) run here with
a 32-bit register file, in two modes of the interpreter:

- protected mode: CR0.PE, paging off, EFER 0, flat 32-bit code and data segments (as a
  multiboot loader leaves them, kvm/boot.py boot_multiboot);
- compatibility mode: the boot contract's IA-32e state (4-level paging, EFER.LMA) with a
  32-bit code segment (D = 1, L = 0).

unicorn's UC_MODE_32 is the reference for both: what 32-bit code can see is the same in
the two modes. Compared after each sequence: EAX..EDI, EIP, EFLAGS (with the same exact
undefined-flags mask), the data buffer and the stack window; after each single step the
registers and flags. Only the low 32 bits of the interpreter's registers are compared:
the upper halves do not exist in protected mode, and the SDM leaves them undefined in
compatibility mode (every sequence starts with them zero).

What changes from the 64-bit sequences: eight registers and no REX prefixes; no 64-bit
operands; 32-bit addressing (no RIP-relative operands, absolute disp32 instead; reserved
index registers often negative, so base + index * scale wraps at 4 GiB); and the 32-bit
forms: push/pop r32/m32/imm, pop esp, near call rel32 / r32 / m32 with ret [imm16], jmp
r32 / m32, pushfd/popfd, leave, the one-byte inc/dec (40h-4Fh), lea whose sum wraps
around, loop/jecxz with ECX, stos/movs with EDI/ESI, and xchg, cmpxchg, bswap as in 64-bit
code. Not generated, as not supported by the interpreter in 32-bit code: ENTER, PUSHAD/
POPAD, the BCD instructions (AAA, DAA ...), BOUND, 16-bit addressing (67h) and far
transfers other than JMP ptr16:32.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
from unicorn import UC_MODE_32
from unicorn import x86_const as U

from kvmdbg.cpu.executor import HALTED, run
from kvmdbg.cpu.regs import CR0_ET, CR0_PE
from kvmdbg.cpu.segments import from_descriptor
from kvmdbg.kvm.boot import MULTIBOOT_GDT_ENTRIES
from tests.cpu.test_differential import (ARITH, CCS, DATA, DATA_SIZE, DF, FIXED_EFFECT, FORMS,
                                         PTR, R32, RSP, SEED, ZF, Call, Generator, Mode,
                                         Opnd, batch, check_batch)
from tests.helpers import machine

BATCHES = 12                 # per mode: 2 x 600 sequences
MIN_LEA_DISP = 0x1000_0000


@lru_cache(maxsize=None)
def _ks32():
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    return Ks(KS_ARCH_X86, KS_MODE_32)


def asm32(source: str, address: int) -> bytes:
    code, _ = _ks32().asm(source, address)
    return bytes(code or b"")


class Generator32(Generator):
    """Sequences for 32-bit code: the 64-bit generator with eight registers and 32-bit
    addressing, plus the forms only 32-bit code has."""

    NREGS = 8
    WORD = 4
    SIZES = (1, 2, 4)
    REX = False
    BASES, INDEXES = (1, 2), (1, 1)   # leaves a byte register (AL..BL) writable

    def mem(self, size: int, rex: bool = True, ptr: bool = True, rip: bool = True):
        """A 32-bit memory operand in the data buffer or the stack (rex, rip: unused here)."""
        r = self.rng
        pre = f"{PTR[size]} ptr " if ptr else ""
        bases, idxs = self.bases, self.indexes
        modes = ["esp", "abs", "eiz"]
        if bases:
            modes += ["base", "base_d8", "base_d32", "eiz"]
            if idxs:
                modes += ["bisd", "bisd", "bisd"]
        if idxs:
            modes += ["isd", "isd"]
        mode = r.choice(modes)
        if mode == "esp":
            d = r.randrange(0, 0x80)
            text = f"[esp + {d:#x}]" if d else "[esp]"
        elif mode == "abs":
            text = f"[{DATA + r.randrange(0x100, DATA_SIZE - 0x100):#x}]"
        elif mode == "eiz":
            # A SIB byte with no index (index field 100b), whatever the scale.
            b = r.choice(bases + [RSP])
            d = r.choice((0, r.randint(-128, 127))) if b != RSP else r.randrange(0, 0x80)
            text = f"[{R32[b]} + eiz*{r.choice((1, 2, 4, 8))}{self._disp(d)}]"
        elif mode.startswith("base"):
            d = {"base": 0, "base_d8": r.randint(-128, 127),
                 "base_d32": r.choice((1, -1)) * r.randrange(0x80, 0x300)}[mode]
            text = f"[{R32[r.choice(bases)]}{self._disp(d)}]"
        elif mode == "isd":
            text = f"[{R32[r.choice(idxs)]}*{r.choice((1, 2, 4, 8))} + {DATA + r.randrange(0x500, 0x1B00):#x}]"
        else:
            d = r.choice((0, r.randint(-128, 127), r.choice((1, -1)) * r.randrange(0x80, 0x300)))
            text = f"[{R32[r.choice(bases)]} + {R32[r.choice(idxs)]}*{r.choice((1, 2, 4, 8))}{self._disp(d)}]"
        return Opnd(pre + text, "mem"), None

    def point(self, i: int, addr: int, into=None) -> None:
        self.emit(f"mov {R32[i]}, {addr:#x}", into=into)

    def f_lea(self, s, into=None):
        """LEA of an in-buffer operand, or of any registers with a large displacement, whose
        sum wraps around at 4 GiB (LEA does not access memory)."""
        r = self.rng
        if r.random() < 0.5:
            return super().f_lea(s, into)
        d = self.reg(s, True)
        base = R32[r.randrange(8)]
        index = R32[r.choice([i for i in range(8) if i != RSP])]
        disp = r.choice((1, -1)) * r.randrange(MIN_LEA_DISP, 0x8000_0000)
        self.emit(f"lea {d.text}, [{base} + {index}*{r.choice((1, 2, 4, 8))}{self._disp(disp)}]", into=into)

    def f_loop(self, mn, a32, n, into=None):
        """LOOPcc / JECXZ counting with ECX (n: its value first; None: whatever it holds)."""
        if n is not None:
            self.emit(f"mov ecx, {n}", into=into)
        self.branch(mn, ZF if mn in ("loope", "loopne") else 0, into)

    def f_incdec1(self, mn, s, into=None):
        """INC/DEC r16/r32 in their one-byte forms (40h+r, 48h+r): REX prefixes in 64-bit code."""
        if not self.writable:
            return
        i = self.rng.choice(self.writable)
        code = (b"\x66" if s == 2 else b"") + bytes([(0x40 if mn == "inc" else 0x48) + i])
        eff = FIXED_EFFECT[mn]
        self.emit(raw=code, defines=eff[0], undef=eff[1], into=into)

    def _indirect(self, k: str):
        """(operand text, setup) of an indirect near transfer: a register or a dword in
        memory that the setup fills with the target."""
        if k == "r":
            a = self.reg(4, True)
        else:
            a, _ = self.mem(4)
        return a.text, (f"mov {a.text}, {{target}}",)

    def f_call_ind(self, k, into=None):
        via, setup = self._indirect(k)
        (self.items if into is None else into).append(Call(self.body(push=False), 0, via, setup))

    def f_near(self, cc, into=None):
        """Jcc / JMP rel32 (cc None: JMP), the forms compiled code uses for far targets."""
        if cc is not None:
            self.definer(into)
        self.branch("jmp" if cc is None else f"j{cc}", 0, into, near=True)

    def f_pushf16(self, into=None):
        """PUSHF with a 66h prefix: the low 16 bits of EFLAGS in a 2-byte slot."""
        self.emit(raw=b"\x66\x9c", reads=ARITH, into=into)

    def f_popf16(self, into=None):
        """POPF with a 66h prefix (of a pushed word with no TF)."""
        r = self.rng
        v = 0x2 | r.getrandbits(12) & ARITH | r.choice((0, DF)) | r.choice((0, 0x8 | 0x20 | 0x8000, 0x200, 0x7000))
        self.emit(raw=b"\x66\x68" + v.to_bytes(2, "little"), into=into)
        self.emit(raw=b"\x66\x9d", defines=ARITH, into=into)

    def f_endbr32(self, into=None):
        """ENDBR32, a NOP without CET (compilers emit it with -fcf-protection)."""
        self.emit(raw=bytes.fromhex("f30f1efb"), into=into)

    def f_jmp_ind(self, k, into=None):
        via, setup = self._indirect(k)
        self.branch("jmp", 0, into, via=via, setup=setup)


def forms32() -> tuple:
    """The 64-bit forms that 32-bit code has (the stack ones with 32-bit slots), and the
    32-bit ones."""
    dropped = {"enter", "movsxd"}
    stack = {"leave", "push", "pop", "pop_rsp"}
    out = []
    for f in FORMS:
        fam = f[0]
        if fam in dropped or f in (("implicit", "cdqe"), ("implicit", "cqo"), ("xchg", 4, "r8d_eax")):
            continue
        if fam == "setcc" and f[2] == "rex":
            continue
        if fam == "loop" and (f[2] or f[1] == "jrcxz"):         # 67h: CX in 32-bit code
            continue
        if fam == "string" and f[5]:
            continue
        if fam in stack and f[1] == 8:
            f = (fam, 4) + f[2:]
        elif fam != "call" and 8 in f[1:]:
            continue
        out.append(f)
    for mn in ("inc", "dec"):
        for s in (2, 4):
            out.append(("incdec1", mn, s))
    for k in "rm":
        out.append(("call_ind", k))
        out.append(("jmp_ind", k))
    out += [("call", 4), ("pushf16",), ("popf16",), ("near", None), ("endbr32",)] + [("near", cc) for cc in CCS]
    # Those of 32-bit code's own forms are each forced into a few sequences, not one.
    extra = [f for f in out if f[0] in EXTRA]
    return tuple(out + extra * 3)


EXTRA = {"incdec1", "call_ind", "jmp_ind", "push", "pop", "pop_rsp", "leave", "pushfq", "popfq",
         "pushf16", "popf16", "call", "loop", "string", "lea", "near", "endbr32"}
FORMS32 = forms32()
Generator32.FORMS = FORMS32
_CODE32, _DATA32 = (from_descriptor(sel, MULTIBOOT_GDT_ENTRIES[sel >> 3]) for sel in (0x08, 0x10))


def _flat32(cpu) -> None:
    cpu.load_cs(_CODE32)
    for name in ("ss", "ds", "es", "fs", "gs"):
        cpu.set_segment(name, _DATA32)


def protected_mode(vm, cpu) -> None:
    """Paging off, flat 32-bit segments (the boot contract's page tables stay in RAM, unused)."""
    cpu.set_cr0(CR0_PE | CR0_ET)
    cpu.set_cr4(0)
    cpu.set_efer(0)
    _flat32(cpu)
    assert cpu.mode_name == "32-bit protected mode"


def compat_mode(vm, cpu) -> None:
    """The boot contract's IA-32e mode, identity-mapped, with a 32-bit code segment."""
    _flat32(cpu)
    assert cpu.mode_name == "compatibility mode"


def _mode(name: str, seed: int, setup) -> Mode:
    return Mode(name, Generator32, FORMS32, asm32, 32, UC_MODE_32, R32[:8], U.UC_X86_REG_EIP,
                U.UC_X86_REG_EFLAGS, seed, setup)


PROTECTED = _mode("protected mode", SEED + 32, protected_mode)
COMPAT = _mode("compatibility mode", SEED + 33, compat_mode)
MODES = {"protected": PROTECTED, "compat": COMPAT}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b", range(BATCHES))
def test_against_unicorn_32(mode, b):
    check_batch(b, MODES[mode])


def _sum(o, regs) -> int:
    """A memory operand's base + index * scale + disp before the 32-bit wrap."""
    names = {n: i for i, n in enumerate(R32[:8])}
    v = o.disp
    if o.base:
        v += regs[names[o.base]]
    if o.index:
        v += regs[names[o.index]] * o.scale
    return v


def test_coverage_32():
    """The sequences contain 32-bit code's own forms, take both ways of each conditional
    transfer and make addresses that wrap around at 4 GiB (so the comparisons above are
    of these, not only of forms 64-bit code shares)."""
    seen = set()
    for mode in MODES.values():
        for b in range(BATCHES):
            for seq, dec, ref in batch(b, mode):
                before = [seq.regs] + [st[1] for st in ref.steps]
                for j, (d, *_rest) in enumerate(ref.trace):
                    mn, raw = d.mnemonic, d.raw.lstrip(b"\x66\xf3\xf2")
                    kinds = tuple(o.kind for o in d.operands)
                    seen.add((mn, kinds))
                    if raw[0] in range(0x40, 0x50):
                        seen.add(("one-byte " + mn, d.operands[0].size))
                    if raw[0] == 0x0F and raw[1] & 0xF0 == 0x80 or raw[0] == 0xE9:
                        seen.add(("rel32", "jmp" if mn == "jmp" else "jcc"))
                    if (mn[0] == "j" and mn != "jmp") or mn.startswith("loop"):
                        nxt = ref.steps[j][2]
                        seen.add((mn, "taken" if nxt != d.address + d.length else "not taken"))
                    for o in d.operands:
                        if o.kind == "mem" and not 0 <= _sum(o, before[j]) < 1 << 32:
                            seen.add(("wraps", "lea" if mn == "lea" else "access"))
    want = {("push", ("reg",)), ("push", ("mem",)), ("push", ("imm",)), ("pop", ("reg",)),
            ("pop", ("mem",)), ("call", ("imm",)), ("call", ("reg",)), ("call", ("mem",)),
            ("jmp", ("reg",)), ("jmp", ("mem",)), ("ret", ()), ("ret", ("imm",)),
            ("pushfd", ()), ("popfd", ()), ("pushf", ()), ("popf", ()), ("leave", ()),
            ("endbr32", ()), ("bswap", ("reg",)), ("cmpxchg", ("mem", "reg")),
            ("xchg", ("reg", "reg")), ("xchg", ("mem", "reg")),
            ("rel32", "jmp"), ("rel32", "jcc"), ("wraps", "lea"), ("wraps", "access")}
    want |= {(f"one-byte {mn}", s) for mn in ("inc", "dec") for s in (2, 4)}
    want |= {(f"{op}{sfx}", ("mem", m)) for op, m in (("stos", "reg"), ("movs", "mem")) for sfx in "bwd"}
    want |= {(mn, t) for mn in ("loop", "loope", "loopne", "jecxz") for t in ("taken", "not taken")}
    want |= {(f"j{cc}", t) for cc in CCS for t in ("taken", "not taken")}
    assert not want - seen, f"never executed: {sorted(want - seen, key=str)}"


@pytest.mark.parametrize("mode", MODES)
def test_endbr32_is_a_nop(mode):
    """ENDBR32 (F3 0F 1E FB) is a NOP when CET is off (SDM Vol. 2A ENDBR32), as ENDBR64
    is; the interpreter stopped on it with 'unsupported instruction'."""
    seq_code = bytes.fromhex("f30f1efb") + asm32("mov eax, 7", 0x100004) + b"\xf4"
    vm, cpu = machine(b"\xf4")
    MODES[mode].setup(vm, cpu)
    vm.write_gpa(0x100000, seq_code)
    cpu.rip = 0x100000
    assert run(cpu, 10) == HALTED, cpu.shutdown
    assert cpu.r[0] == 7 and cpu.rip == 0x100000 + len(seq_code)
