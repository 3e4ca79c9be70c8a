"""The x86-64 target description gdb reads with qXfer:features:read, and the register
numbering of the g/G/p/P packets, both generated from REGISTERS below.

gdb's amd64 support wants the features org.gnu.gdb.i386.core (the general registers,
rip, eflags, the selectors and the x87 block) and org.gnu.gdb.i386.sse; as QEMU does,
the core feature also carries fs_base/gs_base/k_gs_base and the control registers with
their flag types, so gdb's `info registers cr4` decodes bits and `set $cr4 = ...` works.
Registers are always 64-bit wide, also before the guest enters long mode (QEMU's x86_64
stub does the same: the register layout cannot change under gdb's feet). The x87 and
SSE registers are not modelled: they read as zero and writes to them are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmdbg.cpu.regs import CR0_BITS, CR4_BITS, EFER_BITS, RFLAGS_BITS


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str = "int64"
    feature: str = "core"
    group: str = ""
    modelled: bool = True          # False: reads as zero, writes ignored


_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(f"r{i}" for i in range(8, 16))

REGISTERS: tuple = (
    *(Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64") for n in _GPRS),
    Reg("rip", 64, "code_ptr"),
    Reg("eflags", 32, "i386_eflags"),
    *(Reg(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(Reg(n, 64) for n in ("fs_base", "gs_base", "k_gs_base")),
    Reg("cr0", 64, "i386_cr0", group="system"),
    Reg("cr2", 64, group="system"),
    Reg("cr3", 64, "i386_cr3", group="system"),
    Reg("cr4", 64, "i386_cr4", group="system"),
    Reg("cr8", 64, group="system"),
    Reg("efer", 64, "i386_efer", group="system"),
    *(Reg(f"st{i}", 80, "i387_ext", modelled=False) for i in range(8)),
    *(Reg(n, 32, "int", group="float", modelled=False)
      for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")),
    *(Reg(f"xmm{i}", 128, "vec128", feature="sse", modelled=False) for i in range(16)),
    Reg("mxcsr", 32, "i386_mxcsr", feature="sse", group="vector", modelled=False),
)

BY_NAME = {r.name: i for i, r in enumerate(REGISTERS)}
PC = BY_NAME["rip"]

CR3_BITS = (("PWT", 3), ("PCD", 4))
MXCSR_BITS = (("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6),
              ("IM", 7), ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))

FLAG_TYPES = {"i386_eflags": (4, RFLAGS_BITS), "i386_cr0": (8, CR0_BITS),
              "i386_cr3": (8, CR3_BITS), "i386_cr4": (8, CR4_BITS),
              "i386_efer": (8, EFER_BITS), "i386_mxcsr": (4, MXCSR_BITS)}

FEATURES = {"core": "org.gnu.gdb.i386.core", "sse": "org.gnu.gdb.i386.sse"}


def _flags(type_id: str) -> list[str]:
    size, bits = FLAG_TYPES[type_id]
    lines = [f'  <flags id="{type_id}" size="{size}">']
    lines += [f'    <field name="{name}" start="{bit}" end="{bit}"/>' for name, bit in bits]
    if type_id == "i386_cr3":
        lines.append('    <field name="PDBR" start="12" end="63"/>')
    return lines + ["  </flags>"]


def _vec128() -> list[str]:
    lanes = (("v4f", "ieee_single", 4), ("v2d", "ieee_double", 2),
             ("v16i8", "int8", 16), ("v8i16", "int16", 8), ("v4i32", "int32", 4),
             ("v2i64", "int64", 2))
    lines = [f'  <vector id="{vid}" type="{t}" count="{n}"/>' for vid, t, n in lanes]
    lines.append('  <union id="vec128">')
    lines += [f'    <field name="{vid}" type="{vid}"/>' for vid, _, _ in lanes]
    lines.append('    <field name="uint128" type="uint128"/>')
    return lines + ["  </union>"]


def target_xml() -> str:
    """The whole description as one document (no xi:include: one qXfer annex)."""
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
           "<architecture>i386:x86-64</architecture>"]
    for key, fname in FEATURES.items():
        regs = [(i, r) for i, r in enumerate(REGISTERS) if r.feature == key]
        out.append(f'<feature name="{fname}">')
        used = {r.type for _, r in regs}
        for t in FLAG_TYPES:
            if t in used:
                out += _flags(t)
        if "vec128" in used:
            out += _vec128()
        for i, r in regs:
            group = f' group="{r.group}"' if r.group else ""
            out.append(f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" '
                       f'regnum="{i}"{group}/>')
        out.append("</feature>")
    out.append("</target>")
    return "\n".join(out) + "\n"


def read(regs, index: int) -> bytes:
    """Register `index` of a session.Registers view, little-endian, its own width."""
    r = REGISTERS[index]
    value = regs[r.name] if r.modelled else 0
    return (value & ((1 << r.bits) - 1)).to_bytes(r.bits // 8, "little")


def decode(index: int, data: bytes):
    """The value gdb's bytes give register `index`; None for one that is not modelled or
    bytes of the wrong width."""
    r = REGISTERS[index]
    if not r.modelled or len(data) != r.bits // 8:
        return None
    return int.from_bytes(data, "little")


def all_bytes(regs) -> bytes:
    return b"".join(read(regs, i) for i in range(len(REGISTERS)))


def sizes() -> list[int]:
    return [r.bits // 8 for r in REGISTERS]
