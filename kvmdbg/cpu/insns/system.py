"""System instructions: flags control, hlt, int3/int n/into, iretq, cpuid, rdtsc, MSRs, CR moves
(in data.py), TLB control, descriptor tables and TR/LDTR, port I/O, vmcall, ud2, SMAP (stac/clac),
protection keys (wrpkru/rdpkru), fences and cache-line flushes."""

from kvmdbg.bits import MASKS, NONCANONICAL
from kvmdbg.cpu.faults import GP, OF_, PFERR_USER, SS, UD
from kvmdbg.cpu.regs import AC, CR4_PKE
from kvmdbg.cpu.translate import handles


@handles("cld")
def cld(g):
    g.emit("cpu.rflags &= ~0x400")


@handles("std")
def std(g):
    g.emit("cpu.rflags |= 0x400")


def _iopl_check(g):
    # CLI/STI/IN/OUT need CPL <= IOPL (the TSS's I/O permission bitmap is not consulted).
    g.emit("if cpu.cs & 3 > (cpu.rflags >> 12 & 3): raise GuestFault(13, 0)")


@handles("cli", stops=True)
def cli(g):
    _iopl_check(g)
    g.emit("cpu.rflags &= ~0x200")


@handles("sti", stops=True)
def sti(g):
    _iopl_check(g)
    g.emit("cpu.rflags |= 0x200")


@handles("hlt")
def hlt(g):
    g.require_cpl0()
    g.emit(f"cpu.rip = {g.next_rip}")
    g.emit("cpu.ops.hlt(cpu)")
    g.ends_block = True


@handles("int3", "int", "into")
def int_n(g):
    """INT3, INT imm8 and INTO (32-bit code; #UD in 64-bit mode, which capstone does not
    decode): traps, so the saved RIP is the next instruction (SDM Vol. 2A INT n)."""
    m = g.d.mnemonic
    vector = 3 if m == "int3" else OF_ if m == "into" else g.op(0).imm & 0xFF
    raise_it = f"cpu.rip = {g.next_rip}; raise SoftwareInterrupt({vector}, {g.d.length})"
    if m == "into":
        g.emit(f"if {g.cond('o')}: {raise_it}")
        return
    g.emit(raise_it)
    g.ends_block = True


@handles("ud2", "ud1", "ud0")
def ud2(g):
    g.emit("raise GuestFault(6)")


@handles("iretq")
def iretq(g):
    g.emit("interrupts.iretq(cpu)")
    g.ends_block = True


@handles("cpuid", stops=True)
def cpuid(g):
    g.emit("a, b, c, d = cpu.ops.cpuid(cpu, r[0] & 0xffffffff, r[1] & 0xffffffff)")
    g.emit("r[0] = a & 0xffffffff; r[3] = b & 0xffffffff; r[1] = c & 0xffffffff; r[2] = d & 0xffffffff")


@handles("rdtsc", sync=True)
def rdtsc(g):
    g.emit("if cpu.cr4 & 4 and cpu.cs & 3: raise GuestFault(13, 0)")
    g.emit("t = cpu.cycles")
    g.emit("r[0] = t & 0xffffffff; r[2] = t >> 32 & 0xffffffff")


@handles("rdmsr", sync=True)
def rdmsr(g):
    g.require_cpl0()
    g.emit("v = system.rdmsr(cpu, r[1] & 0xffffffff)")
    g.emit("r[0] = v & 0xffffffff; r[2] = v >> 32 & 0xffffffff")


@handles("wrmsr", stops=True)
def wrmsr(g):
    g.require_cpl0()
    g.emit("system.wrmsr(cpu, r[1] & 0xffffffff, (r[2] & 0xffffffff) << 32 | r[0] & 0xffffffff)")


@handles("invlpg", stops=True)
def invlpg(g):
    g.require_cpl0()
    g.emit(f"system.invlpg(cpu, {g.addr(g.op(0))})")


@handles("invpcid", stops=True)
def invpcid(g):
    # SDM INVPCID: #UD if CPUID.(EAX=07H,ECX=0):EBX.INVPCID[bit 10] = 0; an invalid opcode
    # is found at decode, before the CPL check's #GP (SDM Vol. 3A 6.9, priorities 7 and 8).
    g.emit(f"if 'invpcid' not in cpu.features: raise GuestFault({UD})")
    g.require_cpl0()
    kind = g.read(g.op(0))
    o = g.op(1)
    a = g.addr(o)
    lo = g.load(a, 8, g.uses_ss(o))
    hi = g.load(g.value(f"({a} + 8) & 0xffffffffffffffff"), 8, g.uses_ss(o))
    g.emit(f"system.invpcid(cpu, {kind}, {lo}, {hi})")


@handles("lgdt", "lidt", stops=True)
def lgdt(g):
    g.require_cpl0()
    o = g.op(0)
    a = g.addr(o)
    limit = g.load(a, 2, g.uses_ss(o))
    # 64-bit code loads an 8-byte base; 32-bit code 4 bytes (24 bits of them with a 66h
    # prefix) (SDM Vol. 2A LGDT/LIDT).
    size = 8 if g.d.bits == 64 else 4
    base = g.load(g.value(f"({a} + 2) & {g.ip_mask:#x}"), size, g.uses_ss(o))
    if g.d.bits != 64 and 0x66 in g.prefixes():
        base = g.value(f"{base} & 0xffffff")
    g.emit(f"cpu.{g.d.mnemonic[1:]}r = ({base}, {limit})")


@handles("sgdt", "sidt")
def sgdt(g):
    """SGDT/SIDT: limit, then base, 8 bytes of it in 64-bit code, 4 in 32-bit code (SDM Vol. 2A
    SGDT: the full 32 bits also with a 66h prefix). Allowed at any CPL (CR4.UMIP is
    reserved for this guest). The bytes are written as one access, so a fault on either
    page writes nothing."""
    o = g.op(0)
    a = g.addr(o)
    size = 2 + (8 if g.d.bits == 64 else 4)
    g.writes_memory()
    g.emit(f"system.store_pseudo_descriptor(cpu, {a}, {size}, cpu.{g.d.mnemonic[1:]}r, "
           f"{g.uses_ss(o)})")


@handles("str", "sldt")
def str_(g):
    """STR/SLDT: the TR or LDTR selector; a register destination is zero-extended, memory
    takes 16 bits (SDM Vol. 2A STR, SLDT)."""
    g.write(g.op(0), "cpu.tr" if g.d.mnemonic == "str" else "cpu.ldtr")


@handles("ltr", "lldt", stops=True)
def ltr(g):
    """LTR/LLDT r/m16 at CPL 0 (cpu/tss.py)."""
    g.require_cpl0()
    selector = g.read(g.op(0), 2)
    g.emit(f"tss.{g.d.mnemonic}(cpu, {selector})")


@handles("in", stops=True)
def in_(g):
    dst, port = g.op(0), g.op(1)
    _iopl_check(g)
    p = g.read(port) if port.kind == "reg" else str(port.imm & 0xFF)
    v = g.value(f"cpu.ops.pio_in(cpu, {p}, {dst.size}) & {MASKS[dst.size]:#x}")
    g.write(dst, v)


@handles("out")
def out(g):
    port, src = g.op(0), g.op(1)
    _iopl_check(g)
    p = g.read(port) if port.kind == "reg" else str(port.imm & 0xFF)
    g.emit(f"cpu.rip = {g.next_rip}")
    g.emit(f"cpu.ops.pio_out(cpu, {p}, {src.size}, {g.read(src)})")
    g.ends_block = True


@handles("vmcall")
def vmcall(g):
    g.emit("cpu.ops.vmcall(cpu)")
    g.emit(f"if cpu.rip == {g.d.address}: cpu.rip = {g.next_rip}")
    g.ends_block = True


# --- SMAP and protection keys ---
#
# AC and PKRU are part of every data access's permission check (walker.access_error) and
# of the mode the CPU memoises walks under (Cpu._select_mode): they are written through
# cpu.set_rflags / cpu.set_pkru, which drop the fast paths, and the block ends after them
# (stops=True).


@handles("stac", "clac", stops=True)
def stac(g):
    # SDM STAC/CLAC: #UD if CPL > 0 or CPUID.(EAX=7,ECX=0):EBX.SMAP[bit 20] = 0.
    g.emit(f"if cpu.cs & 3 or 'smap' not in cpu.features: raise GuestFault({UD})")
    if g.d.mnemonic == "stac":
        g.emit(f"cpu.set_rflags(materialize(cpu) | {AC:#x})")
    else:
        g.emit(f"cpu.set_rflags(materialize(cpu) & ~{AC:#x})")


@handles("wrpkru", stops=True)
def wrpkru(g):
    # SDM WRPKRU: #UD if CR4.PKE = 0 (decode-time, so before the #GP); #GP(0) if ECX or
    # EDX is not 0; PKRU := EAX. Allowed at any CPL.
    g.emit(f"if not cpu.cr4 & {CR4_PKE:#x}: raise GuestFault({UD})")
    g.emit(f"if r[1] & 0xffffffff or r[2] & 0xffffffff: raise GuestFault({GP}, 0)")
    v = g.value("r[0] & 0xffffffff")
    g.emit(f"cpu.set_pkru({v})")


@handles("rdpkru")
def rdpkru(g):
    # SDM RDPKRU: #UD if CR4.PKE = 0; #GP(0) if ECX is not 0; EDX:EAX := 0:PKRU.
    g.emit(f"if not cpu.cr4 & {CR4_PKE:#x}: raise GuestFault({UD})")
    g.emit(f"if r[1] & 0xffffffff: raise GuestFault({GP}, 0)")
    g.emit("r[0] = cpu.pkru; r[2] = 0")


# --- fences and cache-line flushes ---


@handles("lfence", "mfence", "sfence")
def fence(g):
    """One vCPU's accesses retire in order and the interpreter has no store buffer or
    caches: a fence has no effect beyond retiring."""


@handles("clflush", "clflushopt")
def clflush(g):
    """SDM CLFLUSH/CLFLUSHOPT: faults as a byte load from m8 would (#PF with a read error
    code, #GP or #SS if non-canonical) but needs no data: the address is translated as a
    read (cpu.translate, what a read miss does), and nothing is read (no MMIO access)."""
    o = g.op(0)
    a = g.addr(o)
    with g.block(f"if cpu.fast_r.get({a} >> 12) is None:"):
        if g.uses_ss(o):
            g.emit(f"if {NONCANONICAL.format(a)}: raise GuestFault({SS}, 0)")
        g.emit(f"cpu.translate({a}, {PFERR_USER} if cpu.cs & 3 == 3 else 0)")
