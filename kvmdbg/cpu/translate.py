"""Compile a decoded instruction into a Python handler ``h(cpu, r)``.

Each instruction family (cpu/insns/) emits a few lines of straight-line Python
for its exact operand forms; they are compiled once and cached (decode_cache),
so the run loop only calls a function. Emitters keep one rule that makes faults
precise: everything that can fault (memory reads, the memory write) comes
before any register, flag or RIP update.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from kvmdbg.bits import M32, M64, MASKS, PACK_INTO, UNPACK_FROM
from kvmdbg.cpu import flags as F
from kvmdbg.cpu.faults import GuestFault, SoftwareInterrupt
from kvmdbg.cpu.regs import SUBREGS
from kvmdbg.errors import UnsupportedInstruction

LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})

EMITTERS: dict = {}           # mnemonic -> (emitter, stops, sync)
EXIT_MARK = "#exit#"          # Gen.call_out's lines, until make_handler places them
MAX_BLOCK = 32                # instructions per block handler
HOT_RUNS = 8                  # runs of a basic block before it is compiled again running on

# Base registers whose memory operands default to the stack segment (SDM Vol. 1 3.7.5).
_SS_BASES = frozenset({"rsp", "rbp", "esp", "ebp"})


def handles(*mnemonics: str, stops: bool = False, sync: bool = False):
    """Register an emitter for mnemonics (capstone's spelling, without prefixes).

    stops: the instruction may change the mode (translations, permissions, CPL) or hand
    control to the outside although it falls through, so its block ends after it.
    sync: it reads the step count, so it is always first in its block (the count is exact).
    Facts that depend on the operands the emitter states itself (Gen.stop_block)."""
    def register(fn):
        for m in mnemonics:
            EMITTERS[m] = (fn, stops, sync)
        return fn
    return register


class Gen:
    """Source builder for one instruction's handler."""

    def __init__(self, d):
        self.d = d
        # 32-bit code (protected or compatibility mode) has a 32-bit EIP and, with the flat
        # segments kvmdbg runs (SS.B = 1, cpu/segments.py), a 32-bit ESP and stack slots.
        self.ip_mask = M64 if d.bits == 64 else M32
        self.sp_mask = self.ip_mask
        self.word = 8 if d.bits == 64 else 4
        self.next_rip = (d.address + d.length) & self.ip_mask
        self.lines: list[str] = []
        self._n = 0
        self._addr: dict[int, str] = {}
        self.ends_block = False    # set by emitters that set cpu.rip themselves
        # A direct transfer a block may run on through (see form_block): where it goes on
        # (a jump's or call's target, a conditional jump's fall-through), and for a
        # conditional jump (condition, target) of the exit it takes when taken.
        self.continues_at: int | None = None
        self.side_exit: tuple | None = None
        self.stops_block = False   # see handles(stops=...); set by stop_block()
        self.writes = False        # writes memory (set by store() and writes_memory())

    # --- plumbing ---

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def tmp(self) -> str:
        self._n += 1
        return f"t{self._n}"

    def op(self, i: int):
        return self.d.operands[i]

    def unsupported(self):
        raise UnsupportedInstruction(self.d.address, self.d.text)

    def call_out(self, line: str) -> None:
        """A statement that hands control to the outside (the hypervisor's exit handler, a
        device): what it records (an event, a trace line) must see the exact step count,
        so make_handler adds the instructions the block retired before it (EXIT_MARK)."""
        self.emit(EXIT_MARK + line)

    def stop_block(self) -> None:
        """This form may change the mode: the block ends after it (as handles(stops=True))."""
        self.stops_block = True

    def writes_memory(self) -> None:
        """The emitted code writes guest memory other than through store() (cpu.wr in a
        loop, a helper), so a block checks for self-modification after it."""
        self.writes = True

    # --- operands ---

    def addr(self, o, segment: bool = True) -> str:
        """Effective address of a memory operand, computed once into a temporary."""
        key = id(o) * 2 + segment
        if key in self._addr:
            return self._addr[key]
        parts = []
        if o.base in ("rip", "eip"):      # eip: RIP-relative with a 32-bit address size
            base = (self.next_rip + o.disp) & M64
            parts.append(str(base))
        else:
            if o.base:
                parts.append(self.reg_read(o.base))
            if o.index:
                idx = self.reg_read(o.index)
                parts.append(idx if o.scale == 1 else f"{idx} * {o.scale}")
            if o.disp:
                parts.append(str(o.disp))
        expr = " + ".join(parts) or "0"
        amask = M64 if self.d.addr_size == 8 else 0xFFFF_FFFF
        expr = f"({expr}) & {amask:#x}"
        if segment and o.segment:
            expr = f"(({expr}) + cpu.{o.segment}_base) & {M64:#x}"
        t = self.tmp()
        self.emit(f"{t} = {expr}")
        self._addr[key] = t
        return t

    @staticmethod
    def uses_ss(o) -> bool:
        """Whether memory operand o is accessed through SS: its base is RSP or RBP and no
        FS/GS override names another segment. In 64-bit mode the CS, DS, ES and SS override
        prefixes are ignored (AMD APM Vol. 3 1.2.4), so the decoder keeps only FS and GS."""
        return o.base in _SS_BASES and not o.segment

    def prefixes(self) -> bytes:
        """The legacy prefix bytes before the opcode (and REX, in 64-bit code)."""
        raw = self.d.raw
        i = 0
        while i < len(raw) and (raw[i] in LEGACY_PREFIXES
                                or (self.d.bits == 64 and raw[i] & 0xF0 == 0x40)):
            i += 1
        return raw[:i]

    def sp(self) -> str:
        """The stack pointer as this code size uses it (RSP, or ESP in 32-bit code)."""
        return "r[4]" if self.word == 8 else "(r[4] & 0xffffffff)"

    def reg_read(self, name: str) -> str:
        i, size, shift = SUBREGS[name]
        if size == 8:
            return f"r[{i}]"
        if shift:
            return f"(r[{i}] >> 8 & 0xff)"
        return f"(r[{i}] & {MASKS[size]:#x})"

    def reg_write(self, name: str, expr: str) -> None:
        """expr must already fit the register's size."""
        i, size, shift = SUBREGS[name]
        if size == 8 or size == 4:
            self.emit(f"r[{i}] = {expr}")
        elif shift:
            self.emit(f"r[{i}] = r[{i}] & 0xffffffffffff00ff | ({expr}) << 8")
        else:
            keep = M64 ^ MASKS[size]
            self.emit(f"r[{i}] = r[{i}] & {keep:#x} | {expr}")

    def read(self, o, size: int | None = None) -> str:
        """An expression (or temporary) holding the operand's value, zero-extended."""
        if o.kind == "reg":
            if o.reg not in SUBREGS:
                self.unsupported()
            return self.reg_read(o.reg)
        if o.kind == "imm":
            return str(o.imm & MASKS[size or o.size])
        if o.kind == "mem":
            a = self.addr(o)
            return self.load(a, size or o.size, self.uses_ss(o))
        self.unsupported()

    def load(self, a: str, n: int, ss: bool = False) -> str:
        """Inline fast path of cpu.rd: one dict probe, no call, when the page is cached.
        ss: the access is through SS (a miss checks for #SS instead of #GP)."""
        t, p, o = self.tmp(), self.tmp(), self.tmp()
        self.emit(f"{p} = cpu.fast_r.get({a} >> 12); {o} = {a} & 0xfff")
        got = f"{p}[{o}]" if n == 1 else f"U{n}({p}, {o})[0]"
        miss = "cpu.read_miss_ss" if ss else "cpu.read_miss"
        self.emit(f"{t} = {got} if {p} is not None and {o} <= {4096 - n} else {miss}({a}, {n})")
        return t

    def store(self, a: str, n: int, value: str, ss: bool = False) -> None:
        """Inline fast path of cpu.wr (ss as for load)."""
        self.writes = True
        p, o = self.tmp(), self.tmp()
        self.emit(f"{p} = cpu.fast_w.get({a} >> 12); {o} = {a} & 0xfff")
        put = f"{p}[{o}] = {value}" if n == 1 else f"P{n}({p}, {o}, {value})"
        self.emit(f"if {p} is not None and {o} <= {4096 - n}: {put}")
        self.emit(f"else: {'cpu.write_miss_ss' if ss else 'cpu.write_miss'}({a}, {n}, {value})")

    def write(self, o, expr: str) -> None:
        """Store a value that already fits the operand's size."""
        if o.kind == "reg":
            if o.reg not in SUBREGS:
                self.unsupported()
            self.reg_write(o.reg, expr)
        elif o.kind == "mem":
            self.store(self.addr(o), o.size, expr, self.uses_ss(o))
        else:
            self.unsupported()

    def value(self, expr: str) -> str:
        """Bind an expression to a temporary (so it is evaluated once)."""
        t = self.tmp()
        self.emit(f"{t} = {expr}")
        return t

    def set_flags(self, kind: int, a: str, b: str, res: str, bits: int, extra: str = "0") -> None:
        self.emit(f"cpu.lf = ({kind}, {a}, {b}, {res}, {bits}, {extra})")

    def cond(self, cc: str) -> str:
        return F.cond_expr(cc)

    def jump(self, target_expr: str) -> None:
        self.emit(f"cpu.rip = {target_expr}")
        self.ends_block = True

    def direct_jump(self, target: int) -> None:
        """A jump to a known address (a block may run on into it)."""
        self.jump(str(target))
        self.continues_at = target

    def conditional_jump(self, cond: str, target: int) -> None:
        """A jump to a known address when cond holds, else on to the next instruction (a
        block may run on through the fall-through, leaving when the jump is taken)."""
        self.jump(f"{target} if {cond} else {self.next_rip}")
        self.continues_at = self.next_rip
        self.side_exit = (cond, target)

    @contextmanager
    def block(self, header: str):
        """Lines emitted inside the with-body are nested under `header` (an if/while)."""
        self.emit(header)
        start = len(self.lines)
        yield
        if len(self.lines) == start:
            self.emit("pass")
        self.lines[start:] = ["    " + line for line in self.lines[start:]]

    def require_cpl0(self) -> None:
        self.emit("if cpu.cs & 3: raise GuestFault(13, 0)")


def _globals() -> dict:
    from kvmdbg.cpu import interrupts, segments, system, tss
    from kvmdbg.bits import sign_extend
    return {
        "GuestFault": GuestFault, "SoftwareInterrupt": SoftwareInterrupt, "materialize": F.materialize, "carry_in": F.carry_in,
        "inc_dec_src": F.inc_dec_carry_source, "COND": F.CONDITIONS, "sx": sign_extend,
        "system": system, "interrupts": interrupts, "segments": segments, "tss": tss,
        **{f"U{n}": f for n, f in UNPACK_FROM.items()}, **{f"P{n}": f for n, f in PACK_INTO.items()},
    }


_GLOBALS: dict | None = None


class InsnCode:
    """One instruction's generated source and how it may sit in a block."""

    __slots__ = ("d", "lines", "ends", "stops", "sync", "writes", "pages", "continues_at",
                 "side_exit", "facts")

    def __init__(self, d, lines, ends, stops, sync, writes, continues_at=None, side_exit=None):
        self.d = d
        self.lines = lines
        self.ends = ends          # transfers control itself: the block ends after it
        self.stops = stops        # may change the mode: the block ends after it
        self.sync = sync          # must be the first instruction of its block
        self.writes = writes      # writes memory (possibly code): check for self-modification
        self.pages = ()           # host page numbers its bytes came from (set by the fetcher)
        self.continues_at = continues_at    # see Gen.direct_jump / conditional_jump
        self.side_exit = side_exit
        self.facts = None         # (rip-blind, quiet, sets the flags): see _facts


def generate(d) -> InsnCode:
    """Decoded -> InsnCode. Raises UnsupportedInstruction for unknown mnemonics."""
    if not EMITTERS:
        from kvmdbg.cpu import insns  # noqa: F401  (fills EMITTERS)
    entry = EMITTERS.get(d.mnemonic)
    if entry is None:
        raise UnsupportedInstruction(d.address, d.text)
    emit, stops, sync = entry
    g = Gen(d)
    try:
        emit(g)
    except UnsupportedInstruction:
        raise
    except Exception as e:
        # An operand form the emitter does not know (a register it has no name for, ...):
        # the instruction cannot run here, which is what the user needs to hear.
        raise UnsupportedInstruction(d.address, d.text) from e
    ends = g.ends_block
    if not ends:
        g.emit(f"cpu.rip = {g.next_rip}")
    return InsnCode(d, g.lines, ends, stops or g.stops_block, sync, g.writes, g.continues_at,
                    g.side_exit)


def form_block(first: InsnCode, code_at, run_on: bool = True) -> tuple[list, bool]:
    """The instructions of the block that starts with `first`: code up to an indirect
    control transfer, a mode-changing instruction, the end of the page or MAX_BLOCK.

    It runs on through direct transfers that stay on its page: a jump's or call's target,
    and a conditional jump's fall-through (make_handler makes the taken jump an early
    return), as QEMU chains translation blocks; a run loop pass per short block was most
    of the cost of branchy code. It stops at a transfer back to an instruction it holds
    already (a loop's back edge stays its last instruction, so the loop repeats inside the
    handler). code_at(address) fetches the InsnCode at an address (it may fault: the block
    then ends before it, and the fault is raised again, precisely, when execution gets
    there). An instruction that must start its block, or that crosses into another page,
    starts the next block instead.

    Returns (codes, more): with run_on=False the block stops at its first transfer, and
    more says whether it could have run on there (compiling the longer block pays only
    for code that runs often: Cpu.fetch_block)."""
    codes = [first]
    start = first.d.address
    seen = {start}
    nxt = (start + first.d.length) & M64
    while not codes[-1].stops and len(codes) < MAX_BLOCK:
        last = codes[-1]
        if last.ends:
            nxt = last.continues_at
            if nxt is None or nxt in seen or (last.side_exit and last.side_exit[1] in seen):
                break
            if not run_on:
                return codes, nxt >> 12 == start >> 12
        if nxt >> 12 != start >> 12:
            break
        try:
            c = code_at(nxt)
        except (GuestFault, UnsupportedInstruction):
            break
        if c.sync or len(c.pages) > 1:
            break
        codes.append(c)
        seen.add(nxt)
        nxt = (nxt + c.d.length) & M64
    return codes, False


def _compile(src: str, name: str, extra: dict | None = None):
    global _GLOBALS
    if _GLOBALS is None:
        _GLOBALS = _globals()
    ns = dict(_GLOBALS)
    if extra:
        ns.update(extra)
    exec(compile(src, name, "exec"), ns)
    return ns["h"]


def make_handler(codes: list, loop: bool = False, on_hot=None) -> object:
    """Compile one or more consecutive instructions into h(cpu, r) -> instructions retired.

    Each instruction leaves cpu.rip at the next one, so if instruction k raises,
    cpu.rip names it and h.index[cpu.rip] == k instructions have retired. After an
    instruction that writes memory the block checks cpu.smc, set when a write hit a
    page holding decoded code, and returns early so the new code is fetched.

    Two things a one-instruction handler does are left out of a block where nothing can
    tell (tests/cpu/test_block_codegen.py pins blocks against single-stepping): the RIP
    update of an instruction followed by a rip-blind one (_rip_blind), whose exception
    handler sets RIP if it raises, and the lazy-flags tuple of an instruction whose flags a
    later one overwrites unseen (_dead_flag_writes). One load of each fast-path dict serves
    the whole block. Measured (bench_interpreter.py, paired runs): the ALU loop 13.6 -> 15.5
    M instructions/s, the memory loop 8.2 -> 8.5 M.

    on_hot: called (with the CPU) when the handler starts its HOT_RUNS-th run, once.

    With loop=True, a block whose last instruction jumps back to its first runs again
    inside the handler (QEMU chains translation blocks for the same reason: the run
    loop's overhead per block is most of a short loop's cost). Before each repeat it
    checks everything the run loop would: the jump was taken, no stop is pending, the
    code page is still in the fetch fast path, and another pass fits in the run's step
    budget (cpu.step_end). Each finished pass is added to cpu.steps before the next,
    so a fault in a later pass counts exactly as it would without the loop.
    """
    n = len(codes)
    facts = [c.facts or _facts(c) for c in codes]
    blind = [f[0] for f in facts]
    dead_flags = _dead_flag_writes(facts)
    body = []
    dropped = False
    for k, c in enumerate(codes):
        lines = _place_call_outs(c.lines, k)
        if k and facts[k - 1][2]:
            lines = _known_carry_source(lines, codes[k - 1].lines)
        if k in dead_flags:
            lines = [line for line in lines if not line.startswith("cpu.lf = (")]
        if k < n - 1:
            next_rip = f"cpu.rip = {codes[k + 1].d.address}"
            if c.side_exit is not None:
                # A conditional jump the block runs on through: taken, it leaves early.
                cond, target = c.side_exit
                lines = lines[:-1] + [f"if {cond}: cpu.rip = {target}; return {k + 1}", next_rip]
        else:
            next_rip = ""
        was_dropped, dropped = dropped, (k < n - 1 and blind[k] and blind[k + 1]
                                         and lines[-1] == next_rip)
        if dropped:
            # The next instruction reads cpu.rip only if it raises, and then its own
            # handler (below) sets it: this instruction's RIP update is left out.
            lines = lines[:-1]
        if was_dropped:
            # cpu.rip still names an earlier instruction: whatever this one raises leaves
            # with cpu.rip naming it, as the run loop and delivery expect. A try costs
            # nothing in CPython 3.11 until something is raised.
            lines = (["try:"] + ["    " + line for line in lines or ["pass"]]
                     + ["except BaseException:", f"    cpu.rip = {c.d.address}", "    raise"])
        body.extend(lines)
        if c.writes and k < n - 1:
            body.append(f"if cpu.smc: {next_rip}; return {k + 1}" if dropped
                        else f"if cpu.smc: return {k + 1}")
    # One load of each fast-path dict per block: they are cleared, never replaced.
    text = "\n".join(body)
    prologue = [f"{name} = cpu.{name}" for name in ("fast_r", "fast_w") if f"cpu.{name}." in text]
    if prologue:
        body = [line.replace("cpu.fast_r.", "fast_r.").replace("cpu.fast_w.", "fast_w.")
                for line in body]
    extra = None
    if on_hot is not None:
        # Counts its runs until the HOT_RUNS-th, which asks for the longer block.
        extra = {"_runs": [HOT_RUNS], "_on_hot": on_hot}
        prologue = ["_runs[0] -= 1", "if not _runs[0]: _on_hot(cpu)"] + prologue
    first = codes[0].d
    if loop and _jumps_to(codes[-1], first.address):
        smc = " or cpu.smc" if codes[-1].writes else ""
        body = (prologue + ["fast_x = cpu.fast_x", "while True:"] + ["    " + line for line in body]
                + [f"    if (cpu.rip != {first.address} or cpu.pending{smc} or {first.address >> 12} "
                   f"not in fast_x or cpu.steps + {2 * n} > cpu.step_end):",
                   f"        return {n}",
                   f"    cpu.steps += {n}"])
    else:
        body = prologue + body + [f"return {n}"]
    name = f"<{first.address:#x}: {first.text}>" if n == 1 else f"<block {first.address:#x} +{n}>"
    h = _compile("def h(cpu, r):\n    " + "\n    ".join(body) + "\n", name, extra)
    h.n = n
    h.index = {c.d.address: k for k, c in enumerate(codes)}
    h.insns = [c.d for c in codes]
    return h


# What an instruction's code may touch and still not depend on cpu.rip (see make_handler):
# the fast paths and their miss functions (a fault raises; nothing below reads RIP), the
# flags, the self-modification mark, the FS/GS bases, and the flag helpers.
_RIP_BLIND_ATTRS = frozenset({"fast_r", "fast_w", "read_miss", "read_miss_ss", "write_miss",
                              "write_miss_ss", "rd", "wr", "rd_ss", "lf", "rflags", "smc",
                              "fs_base", "gs_base"})
_CPU_ATTR = re.compile(r"\bcpu\.(\w+)")                 # cpu.<attr>
_CPU_BARE = re.compile(r"(\w*\(?)\bcpu\b(?!\.)")          # cpu itself, and the call it is passed to
_FLAG_HELPERS = frozenset({"materialize(", "carry_in(", "inc_dec_src("})
_FLAG_READS = re.compile(r"cpu\.lf\b(?! = )|cpu\.rflags|materialize\(|carry_in\(|inc_dec_src\(")
_MAY_RAISE = re.compile(r"\braise\b|cpu\.(?:rd|wr|read_miss|write_miss)|fast_[rw]\b|[\w\]]\(")


def _facts(code: InsnCode) -> tuple:
    """(rip-blind, quiet, sets the flags) of an instruction, worked out once (the InsnCode is
    shared by every block that holds it). Quiet: rip-blind, and it neither reads the flags
    nor can raise. Sets the flags: an unconditional `cpu.lf = (...)` line."""
    blind = _rip_blind(code)
    text = "\n".join(code.lines)
    quiet = (blind and not _FLAG_READS.search(text)
             and not _MAY_RAISE.search(text.replace("cpu.rip = ", "")))
    code.facts = (blind, quiet, any(line.startswith("cpu.lf = (") for line in code.lines))
    return code.facts


def _dead_flag_writes(facts: list) -> set:
    """Indices of instructions whose flags (their `cpu.lf = (...)` line) nothing can see: a
    later instruction of the block sets cpu.lf without reading the flags, and neither it
    nor any between them reads the flags, can raise (delivery would push RFLAGS) or hands
    control to anything outside. Building the lazy-flags tuple is most of a register ALU
    instruction's cost."""
    dead = set()
    for k in range(len(facts) - 1):
        if not facts[k][2]:
            continue
        for j in range(k + 1, len(facts)):
            if not facts[j][1]:
                break
            if facts[j][2]:
                dead.add(k)
                break
    return dead


_LF_SET = re.compile(r"cpu\.lf = \((\d+), ")
_INC_DEC_SRC = "inc_dec_src(cpu)"


def _known_carry_source(lines: list, prev_lines: list) -> list:
    """An INC/DEC right after an instruction of the block that set the lazy flags
    unconditionally (and nothing else of cpu.lf) knows what inc_dec_src(cpu) would return:
    that tuple, or its CF source if it was an INC/DEC too (flags.inc_dec_carry_source).
    That saves a call for the DEC of nearly every loop counter. (The earlier instruction's
    flags are never dropped as dead here: this one reads them.)"""
    if not any(_INC_DEC_SRC in line for line in lines):
        return lines
    sets = [line for line in prev_lines if "cpu.lf" in line]
    m = _LF_SET.match(sets[0]) if len(sets) == 1 else None
    if m is None:
        return lines
    known = "cpu.lf[5]" if int(m.group(1)) in (F.INC, F.DEC) else "cpu.lf"
    return [line.replace(_INC_DEC_SRC, known) for line in lines]


def _rip_blind(code: InsnCode) -> bool:
    """Whether the instruction's code touches cpu.rip only to set it, last: it touches the
    CPU only through _RIP_BLIND_ATTRS and hands control to nothing outside (no call-out)."""
    lines = code.lines
    last = lines[-1].strip() if lines else ""
    if last.startswith("cpu.rip = ") and ";" not in last:
        lines = lines[:-1] + [last[len("cpu.rip = "):]]     # its own update, last (a trap
    text = "\n".join(lines)                                 # sets it before raising)
    if EXIT_MARK in text or "cpu.rip" in text:
        return False
    if not _RIP_BLIND_ATTRS.issuperset(_CPU_ATTR.findall(text)):
        return False
    return all(call in _FLAG_HELPERS for call in _CPU_BARE.findall(text))


def _place_call_outs(lines: list, k: int) -> list:
    """The lines of the k-th instruction of a block, each call-out (Gen.call_out) run with
    cpu.steps counting the k instructions before it (the run loop adds a block's count
    only when it returns), and the count put back however the call ends."""
    out = []
    for line in lines:
        indent, mark, call = line.partition(EXIT_MARK)
        if not mark:
            out.append(line)
        elif k == 0:
            out.append(indent + call)
        else:
            out += [f"{indent}cpu.steps += {k}", f"{indent}try:", f"{indent}    {call}",
                    f"{indent}finally:", f"{indent}    cpu.steps -= {k}"]
    return out


def _jumps_to(code: InsnCode, address: int) -> bool:
    """A direct jump, conditional or not (not a call), whose target is address."""
    d = code.d
    return (code.ends and d.mnemonic != "call" and len(d.operands) == 1
            and d.operands[0].kind == "imm" and d.operands[0].imm & M64 == address)
