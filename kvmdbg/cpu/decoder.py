"""Instruction decoding: the only module that imports capstone.

It turns capstone's answer into plain data (Decoded/Operand) that the
translator compiles into a handler, so nothing else depends on capstone's types.
"""

from __future__ import annotations

from dataclasses import dataclass

import capstone
from capstone import x86 as cx


MAX_INSN_LEN = 15


@dataclass(slots=True)
class Operand:
    kind: str                 # 'reg' | 'imm' | 'mem'
    size: int                 # bytes
    reg: str = ""             # register name for 'reg' (e.g. 'eax', 'cr4', 'ah')
    imm: int = 0
    base: str = ""            # memory: base register name, 'rip', or ''
    index: str = ""
    scale: int = 1
    disp: int = 0
    segment: str = ""         # 'fs' / 'gs' or ''


@dataclass(slots=True)
class Decoded:
    address: int
    length: int
    raw: bytes
    mnemonic: str             # without rep/lock prefixes
    op_str: str
    operands: list
    rep: str = ""             # '', 'rep', 'repne'
    lock: bool = False
    addr_size: int = 8
    bits: int = 64            # the code size it was decoded for (64 or 32)

    @property
    def text(self) -> str:
        pre = (self.rep + " ") if self.rep else ""
        return f"{pre}{self.mnemonic} {self.op_str}".strip()


_LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67})

_STRING_OPS = frozenset({"stos", "movs", "lods", "scas", "cmps", "inse", "outs", "insb", "insw",
                         "insd"})

# A SIB index field of 100b without REX.X means "no index" whatever the scale (SDM Vol. 2A
# Table 2-3); capstone names that pseudo-register riz (eiz with a 32-bit address size).
_NO_INDEX = frozenset({0, cx.X86_REG_RIZ, cx.X86_REG_EIZ})

_REG_KIND = {capstone.CS_OP_REG: "reg", capstone.CS_OP_IMM: "imm", capstone.CS_OP_MEM: "mem"}


# 16-bit code is decoded for listings only: the interpreter does not run it (Cpu._fetch_page).
_CS_MODES = {64: capstone.CS_MODE_64, 32: capstone.CS_MODE_32, 16: capstone.CS_MODE_16}


class Decoder:
    """One capstone instance per code size (64-bit; 32-bit protected and compatibility mode)."""

    def __init__(self) -> None:
        self._cs = {}
        self._plain = {}
        for bits, mode in _CS_MODES.items():
            self._cs[bits] = capstone.Cs(capstone.CS_ARCH_X86, mode)
            self._cs[bits].detail = True
            self._plain[bits] = capstone.Cs(capstone.CS_ARCH_X86, mode)

    def decode(self, code: bytes, address: int, bits: int = 64) -> Decoded | None:
        """Decode one instruction; None when the bytes are not a valid instruction (#UD)."""
        for insn in self._cs[bits].disasm(code[:MAX_INSN_LEN], address, 1):
            return self._convert(insn, bits)
        return None

    def disasm(self, code: bytes, address: int, count: int = 0, bits: int = 64):
        """(address, size, mnemonic, op_str) tuples for listings; no detail needed."""
        for a, size, mnem, ops in self._plain[bits].disasm_lite(code, address, count):
            yield a, size, mnem, ops

    def _convert(self, insn, bits: int) -> Decoded:
        cs = self._cs[bits]
        mnem = insn.mnemonic
        rep = ""
        lock = False
        parts = mnem.split()
        while len(parts) > 1 and parts[0] in ("rep", "repe", "repz", "repne", "repnz", "lock", "notrack", "bnd"):
            p = parts.pop(0)
            if p == "lock":
                lock = True
            elif p in ("rep", "repe", "repz"):
                rep = "rep"
            elif p in ("repne", "repnz"):
                rep = "repne"
        mnem = parts[0] if len(parts) == 1 else " ".join(parts)
        # capstone drops F2 from some mnemonics (REPNE MOVSD); the prefix bytes are the truth.
        for b in bytes(insn.bytes):
            if b in (0xF2, 0xF3) and mnem[:4] in _STRING_OPS:
                rep = "rep" if b == 0xF3 else "repne"
            elif b == 0xF0:
                lock = True
            elif b not in _LEGACY_PREFIXES:
                break
        ops = []
        addr_size = 4 if insn.addr_size == 4 else 8
        for o in insn.operands:
            kind = _REG_KIND.get(o.type)
            if kind == "reg":
                ops.append(Operand("reg", o.size, reg=cs.reg_name(o.reg)))
            elif kind == "imm":
                ops.append(Operand("imm", o.size, imm=o.imm))
            elif kind == "mem":
                m = o.mem
                ops.append(Operand(
                    "mem", o.size,
                    base=cs.reg_name(m.base) if m.base else "",
                    index=cs.reg_name(m.index) if m.index not in _NO_INDEX else "",
                    scale=m.scale, disp=m.disp,
                    segment=cs.reg_name(m.segment) if m.segment in (cx.X86_REG_FS, cx.X86_REG_GS) else ""))
            else:
                ops.append(Operand("other", o.size))
        return Decoded(insn.address, insn.size, bytes(insn.bytes), mnem, insn.op_str, ops,
                       rep=rep, lock=lock, addr_size=addr_size, bits=bits)
