"""Text formats shared by commands: gdb's register table and location strings."""

from __future__ import annotations

import re

from kvmdbg.cpu.regs import CR0_BITS, CR4_BITS, EFER_BITS, GPR_NAMES, RFLAGS_BITS

_BRANCH_TARGET = re.compile(r"0x[0-9a-f]+")
_RIP_RELATIVE = re.compile(r"\[rip (?P<sign>[+-]) (?P<disp>0x[0-9a-f]+|\d+)\]")
_BRANCHES = ("call", "jmp", "loop", "loope", "loopne", "jrcxz", "jecxz", "xbegin")


def insn_text(symbols, address: int, size: int, mnemonic: str, op_str: str) -> str:
    """An instruction as gdb shows it: a direct branch's target with its symbol
    (`call 0x100033 <flip>`), a rip-relative operand's address after `#` (`lea rax,
    [rip + 0xff9]        # 0x102000 <msg>`)."""
    text = f"{mnemonic} {op_str}".strip()
    base = mnemonic.split()[-1] if mnemonic else ""
    if (base in _BRANCHES or base.startswith("j")) and _BRANCH_TARGET.fullmatch(op_str):
        sym = symbols.lookup(int(op_str, 16)) if symbols else ""
        return f"{text} {sym}" if sym else text
    m = _RIP_RELATIVE.search(op_str)
    if m:
        disp = int(m.group("disp"), 0)
        target = (address + size + (disp if m.group("sign") == "+" else -disp)) & ((1 << 64) - 1)
        sym = symbols.lookup(target) if symbols else ""
        return f"{text}        # {target:#x}" + (f" {sym}" if sym else "")
    return text


def flag_names(value: int, names, high_first: bool) -> str:
    found = [n for n, b in names if value >> b & 1]
    if high_first:
        found.reverse()
    return "[ " + " ".join(found) + (" " if found else "") + "]"


def eflags_text(value: int) -> str:
    names = [n for n, b in RFLAGS_BITS if value >> b & 1]
    iopl = value >> 12 & 3
    if iopl:
        names.insert(0, f"IOPL={iopl}")
    return "[ " + " ".join(names) + (" " if names else "") + "]"


def cr3_text(value: int, pcide: bool) -> str:
    if pcide:
        return f"[ PDBR={value >> 12:#x} PCID={value & 0xFFF} ]"
    return f"[ PDBR={value >> 12:#x} ]"


# gdb's order (QEMU's gdb stub target description for x86-64 system mode), as `info
# registers` shows it; `info all-registers` adds what else the CPU model holds.
GDB_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENT_SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
GROUPS = {
    "general": GDB_GPRS + ("rip", "eflags"),
    "segment": SEGMENT_SELECTORS + ("fs_base", "gs_base", "k_gs_base", "gdtr", "idtr"),
    "system": ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "pat", "tsc_aux", "pkru"),
}
MAIN = GDB_GPRS + ("rip", "eflags") + SEGMENT_SELECTORS + \
    ("fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer")
EXTRA = ("gdtr", "idtr", "pat", "tsc_aux", "pkru")         # info all-registers only
PAT_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}


def pat_text(value: int) -> str:
    return "[ " + " ".join(f"PA{i}={PAT_TYPES.get(value >> (8 * i) & 7, '?')}"
                           for i in range(8)) + " ]"


def register_rows(cpu, symbols=None, every: bool = False):
    """(name, value, natural) rows in gdb's `info registers` order; with every, the rest
    the CPU model holds (descriptor tables, PAT, TSC_AUX, PKRU) after them."""
    gpr = dict(zip(GPR_NAMES, cpu.r))
    rows = []
    for n in GDB_GPRS:
        v = gpr[n]
        natural = f"{v:#x}" if n in ("rsp", "rbp") else str(v - (1 << 64) if v >> 63 else v)
        rows.append((n, v, natural))
    sym = symbols.lookup(cpu.rip) if symbols else ""
    rows.append(("rip", cpu.rip, f"{cpu.rip:#x}" + (f" {sym}" if sym else "")))
    fl = cpu.get_rflags()
    rows.append(("eflags", fl, eflags_text(fl)))
    mode = cpu.mode_name
    for n in SEGMENT_SELECTORS:
        v = getattr(cpu, n)
        # gdb shows selectors as numbers; outside 64-bit mode CS also names the mode.
        rows.append((n, v, f"{v} [ {mode} ]" if n == "cs" and mode != "64-bit mode" else str(v)))
    rows.append(("fs_base", cpu.fs_base, str(cpu.fs_base)))
    rows.append(("gs_base", cpu.gs_base, str(cpu.gs_base)))
    rows.append(("k_gs_base", cpu.kernel_gs_base, str(cpu.kernel_gs_base)))
    rows.append(("cr0", cpu.cr0, flag_names(cpu.cr0, CR0_BITS, True)))
    rows.append(("cr2", cpu.cr2, f"{cpu.cr2:#x}"))
    rows.append(("cr3", cpu.cr3, cr3_text(cpu.cr3, bool(cpu.cr4 >> 17 & 1))))
    rows.append(("cr4", cpu.cr4, flag_names(cpu.cr4, CR4_BITS, True)))
    rows.append(("cr8", cpu.cr8, str(cpu.cr8)))
    rows.append(("efer", cpu.efer, flag_names(cpu.efer, EFER_BITS, True)))
    if every:
        for n in ("gdtr", "idtr"):
            base, limit = getattr(cpu, n)
            rows.append((n, base, f"{{base = {base:#x}, limit = {limit:#x}}}"))
        rows.append(("pat", cpu.pat, pat_text(cpu.pat)))
        rows.append(("tsc_aux", cpu.tsc_aux, str(cpu.tsc_aux)))
        rows.append(("pkru", cpu.pkru, f"{cpu.pkru:#x}"))
    return rows


def format_register_row(name: str, value: int, natural: str, changed: bool = False) -> str:
    mark = "*" if changed else " "
    return f"{name:<14}{mark}{value:<#19x}{natural}"
