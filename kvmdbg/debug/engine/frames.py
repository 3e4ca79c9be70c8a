"""Stack frames: unwinding with DWARF call-frame information (.eh_frame, .debug_frame),
read with pyelftools' CallFrameInfo, the way gdb's dwarf2 unwinder does it.

A frame's CFA comes from the CFI row that covers its PC (for an outer frame, PC-1: the
call, not the instruction after it); the caller's RSP is the CFA, its RIP the return
address the row says is saved (x86-64: register 16 at CFA-8), and every register the row
saves is read back from its slot. Registers the row does not mention keep their value
(gdb's rule for callee-saved registers on x86-64).

Where no CFI covers a PC the unwinder stops and says so; code.py then carries on with the
stack heuristic (return addresses after a CALL), as before this module existed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from kvmdbg.bits import M64
from kvmdbg.cpu.regs import GPR_NAMES
from kvmdbg.errors import KvmdbgError

# DWARF register numbers of x86-64 (System V psABI, figure 3.36).
DWARF_REGS = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
RA_REG = 16
MAX_FRAMES = 256


@dataclass
class Rule:
    """The CFI row at one PC: CFA = reg + offset, and where registers are saved."""
    pc: int                    # the row's first address
    fde_start: int
    fde_end: int
    cfa_reg: str | None        # None: a DW_CFA_def_cfa_expression (not supported)
    cfa_offset: int
    saved: dict                # register name -> offset from the CFA of its slot
    undefined: tuple = ()      # registers the row marks undefined (RIP: the outermost frame)

    def text(self) -> str:
        """readelf --debug-dump=frames-interp's row: `rsp+8   c-8` (CFA, then the RA)."""
        cfa = f"{self.cfa_reg}+{self.cfa_offset}" if self.cfa_reg else "exp"
        ra = self.saved.get("rip")
        return f"{cfa} {'u' if ra is None else f'c{ra:+d}'}"


class CallFrameInfo:
    """The FDEs of an ELF, by address; each decoded on first use."""

    def __init__(self, fdes: list):
        self._fdes = sorted(fdes, key=lambda f: f[0])      # (start, end, fde)
        self._starts = [f[0] for f in self._fdes]
        self._decoded: dict = {}

    def __bool__(self) -> bool:
        return bool(self._fdes)

    def rule_at(self, pc: int) -> Rule | None:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0:
            return None
        start, end, fde = self._fdes[i]
        if not start <= pc < end:
            return None
        table = self._decoded.get(start)
        if table is None:
            table = self._decoded[start] = fde.get_decoded().table
        row = None
        for r in table:
            if r["pc"] > pc:
                break
            row = r
        if row is None:
            return None
        cfa = row["cfa"]
        saved, undefined = {}, []
        for reg, rule in row.items():
            if not isinstance(reg, int) or reg >= len(DWARF_REGS):
                continue
            if rule.type == "OFFSET":
                saved[DWARF_REGS[reg]] = rule.arg
            elif rule.type == "UNDEFINED":
                undefined.append(DWARF_REGS[reg])
        reg = DWARF_REGS[cfa.reg] if cfa.expr is None and cfa.reg is not None and \
            cfa.reg < len(DWARF_REGS) else None
        return Rule(row["pc"], start, end, reg, cfa.offset or 0, saved, tuple(undefined))


def read_cfi(elf) -> CallFrameInfo:
    """The FDEs of .debug_frame and .eh_frame (the first wins where both cover a PC)."""
    from elftools.dwarf.callframe import FDE
    fdes, seen = [], set()
    if not elf.has_dwarf_info():
        return CallFrameInfo([])
    dwarf = elf.get_dwarf_info()
    sources = []
    if dwarf.has_CFI():
        sources.append(dwarf.CFI_entries)
    if dwarf.has_EH_CFI():
        sources.append(dwarf.EH_CFI_entries)
    for entries in sources:
        for e in entries():
            if isinstance(e, FDE):
                start = e["initial_location"]
                if start not in seen and e["address_range"]:
                    seen.add(start)
                    fdes.append((start, start + e["address_range"], e))
    return CallFrameInfo(fdes)


@dataclass
class Frame:
    """One frame: its level, PC, the registers known in it, and (once its caller is
    unwound) its CFA and the slots its registers were saved in."""
    level: int
    pc: int
    regs: dict                        # register name -> value (what this frame sees)
    rule: Rule | None = None
    cfa: int | None = None
    saved_at: dict = field(default_factory=dict)    # register -> address of its slot
    heuristic: bool = False           # found by the stack scan, not by CFI
    function: object = None           # the (possibly inlined) function, once known
    call_site: tuple | None = None    # (file, line) where the function inlined in it is called
    innermost: bool = True            # the machine frame is #0 (its PC is where it stopped)

    @property
    def lookup_pc(self) -> int:
        """The PC that names the frame's function and line: PC-1 in an outer frame (the
        call instruction, which may be the last of its function)."""
        return self.pc if self.innermost or self.heuristic else self.pc - 1


def frame0(cpu) -> Frame:
    regs = {n: cpu.r[i] for i, n in enumerate(GPR_NAMES)}
    regs["rip"] = cpu.rip
    return Frame(0, cpu.rip, regs)


def caller_of(frame: Frame, cfi: CallFrameInfo, read_u64) -> Frame | None:
    """The caller of `frame` by its CFI row, or None (no row, an undefined RIP, a CFA
    rule kvmdbg does not evaluate, or unreadable memory). Sets frame.cfa and saved_at."""
    rule = cfi.rule_at(frame.lookup_pc)
    frame.rule = rule
    if rule is None or rule.cfa_reg is None or rule.cfa_reg not in frame.regs:
        return None
    cfa = (frame.regs[rule.cfa_reg] + rule.cfa_offset) & M64
    frame.cfa = cfa
    frame.saved_at = {r: (cfa + off) & M64 for r, off in rule.saved.items()}
    if "rip" in rule.undefined or "rip" not in frame.saved_at:
        return None
    regs = dict(frame.regs)
    try:
        for reg, addr in frame.saved_at.items():
            regs[reg] = read_u64(addr)
    except KvmdbgError:
        return None
    regs["rsp"] = cfa
    ret = regs["rip"]
    if ret == 0:
        return None
    return Frame(frame.level + 1, ret, regs, innermost=False)


def unwind(cpu, cfi: CallFrameInfo, read_u64, limit: int = MAX_FRAMES) -> list:
    """The frames from the current PC outwards, as far as CFI reaches (at most limit).
    The last frame's rule is None when no CFI covers it."""
    frames = [frame0(cpu)]
    while len(frames) < limit:
        f = frames[-1]
        nxt = caller_of(f, cfi, read_u64)
        if nxt is None:
            break
        if len(frames) > 1 and nxt.regs["rsp"] <= f.regs["rsp"]:
            break                     # the stack must grow towards the outer frames
        frames.append(nxt)
    return frames
