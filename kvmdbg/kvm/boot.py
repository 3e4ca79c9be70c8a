"""The boot contract (design section 3): the machine state a program starts in.

The same .bin must run unchanged on real KVM, so everything here is plain and
documented: identity-mapped page tables, a flat GDT with user segments, long mode, one
stack per vCPU and a TSS per vCPU whose RSP0 is that stack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from kvmdbg.arch.desc_defs import DESC_TSS_AVAIL, DESC_TSS_BUSY, SEG_P, TSS64_LIMIT, TSS_RSP0
from kvmdbg.arch.pgtable_types import PAGE_PRESENT as P, PAGE_PSE as PS, PAGE_RW as RW
from kvmdbg.bits import PAGE_SIZE, parse_size
from kvmdbg.cpu.regs import (CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR,
                             CR4_OSXMMEXCPT, CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE, RBP, RDI,
                             RDX, RSI, RSP)
from kvmdbg.cpu.segments import from_descriptor
from kvmdbg.cpu.tss import tss_segment
from kvmdbg.errors import ConfigError
from kvmdbg.kvm.profiles import DEFAULT, get_profile, with_knob
from kvmdbg.kvm.vm import Vm

LOAD_ADDRESS = 0x100000
PML4, PDPT, PD, PT0 = 0x1000, 0x2000, 0x3000, 0x4000
GDT = 0x500
STACK_TOP = 0x80000
STACK_STRIDE = 0x4000
SMALL_PAGE_LIMIT = 128 << 20          # RAM below this is mapped with 4 KiB pages
MIN_MEM = 2 << 20
MAX_MEM = 1 << 30
MAX_VCPUS = 8

CR0_BOOT = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
CR4_BOOT = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
EFER_BOOT = EFER_LME | EFER_LMA | EFER_NXE
# null, kernel code 0x08 (L=1), kernel data 0x10, user code 0x18 (L=1, DPL 3: CS 0x1b),
# user data 0x20 (DPL 3: SS 0x23); then one 16-byte TSS descriptor per vCPU (tss_selector).
# All accessed (type bit 0), as loading them leaves them: a load (an interrupt, IRETQ to
# CPL 3) then writes nothing to the GDT.
GDT_ENTRIES = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00AFFB000000FFFF, 0x00CFF3000000FFFF)
TSS_BASE = 0x600                      # vCPU i's 64-bit TSS at TSS_BASE + TSS_STRIDE * i
TSS_STRIDE = 0x80
# The multiboot entry's: null, flat 32-bit code 0x08 and data 0x10.
MULTIBOOT_GDT_ENTRIES = (0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)



@dataclass
class Program:
    code: bytes
    address: int = LOAD_ADDRESS
    symbols: dict[str, int] = field(default_factory=dict)
    path: str = ""
    image: object = None        # a multiboot image (kvm/multiboot.py): booted on the PC machine


def read_symbols(path: Path) -> dict[str, int]:
    """NAME.sym: lines 'ADDRESS NAME' or nm's 'ADDRESS TYPE NAME'."""
    syms: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) not in (2, 3):
            raise ConfigError(f"{path}:{lineno}: expected 'ADDRESS NAME'")
        try:
            addr = int(parts[0], 16)
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: bad address '{parts[0]}'") from None
        syms[parts[-1]] = addr
    return syms


def load_program(path: str) -> Program:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: No such file or directory.")
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory, not a program.")
    code = p.read_bytes()
    if not code:
        raise ConfigError(f"{path}: the program is empty.")
    from kvmdbg.kvm import multiboot
    image = multiboot.parse(str(p), code)
    if image is not None:
        return Program(code, image.entry, dict(image.symbols), str(p), image)
    if multiboot.is_elf(code):
        raise ConfigError(f"{path}: an ELF file without a multiboot header (no magic "
                          f"{multiboot.MULTIBOOT_MAGIC:#x} in its first 8 KiB): kvmdbg boots raw "
                          f"binaries and multiboot images.")
    sym = p.with_suffix(".sym")
    symbols = read_symbols(sym) if sym.exists() else {}
    return Program(code, LOAD_ADDRESS, symbols, str(p))


def boot_multiboot(vm, program: Program, cmdline: str = "") -> None:
    """QEMU's -kernel for a multiboot image: segments, the information structure, and each
    vCPU in the state multiboot spec 3.2 asks for (the boot vCPU; the others wait, halted,
    for a start-up IPI that is not modelled)."""
    from kvmdbg.cpu.regs import RAX, RBX
    from kvmdbg.kvm import multiboot as mb
    image = program.image
    mb.check_fits(image, vm.mem_size)
    for seg in image.segments:
        vm.write_gpa(seg.address, seg.data + bytes(seg.memsz - len(seg.data)))
    for gpa, data in mb.info_structure(vm.mem_size, cmdline).items():
        vm.write_gpa(gpa, data)
    # A flat GDT beside the contract's: null, 32-bit code 0x08 and data 0x10, base 0, 4 GiB
    # (spec 3.2 requires the segments, not the table: the OS loads its own).
    vm.write_gpa(GDT, b"".join(e.to_bytes(8, "little") for e in MULTIBOOT_GDT_ENTRIES))
    for v in vm.vcpus:
        c = v.cpu
        c.set_cr0(CR0_PE | CR0_ET)       # protected mode, paging off
        c.set_cr4(0)
        c.set_efer(0)
        c.set_cr3(0)
        c.gdtr = (GDT, 3 * 8 - 1)
        c.idtr = (0, 0)
        _load_segments(c, MULTIBOOT_GDT_ENTRIES)
        c.set_rflags(0x2)                # IF = 0, VM = 0
        c.r[:] = [0] * 16
        c.r[RAX] = mb.MULTIBOOT_BOOTLOADER_MAGIC
        c.r[RBX] = mb.MBI_ADDR
        c.rip = image.entry
        if v.index:
            c.halted = True
        v.after_set_sregs()


def _load_segments(cpu, gdt) -> None:
    """CS = 0x08 and the data segments = 0x10 with their descriptors from gdt, as a loader
    leaves them (the hidden parts loaded, the descriptors' accessed bits as in the table)."""
    cpu.load_cs(from_descriptor(0x08, gdt[1]))
    for name in ("ss", "ds", "es", "fs", "gs"):
        cpu.set_segment(name, from_descriptor(0x10, gdt[2]))


def tss_selector(index: int) -> int:
    """The selector of vCPU index's TSS descriptor in the contract's GDT."""
    return len(GDT_ENTRIES) * 8 + 16 * index


def tss_descriptor(base: int, limit: int, kind: int = DESC_TSS_AVAIL) -> bytes:
    """The 16 bytes of a present, DPL-0 64-bit TSS descriptor (SDM Vol. 3A Figure 8-4)."""
    lo = ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (kind | SEG_P) << 40
          | (limit >> 16 & 0xF) << 48 | (base >> 24 & 0xFF) << 56)
    return lo.to_bytes(8, "little") + (base >> 32).to_bytes(8, "little")


def _load_tr(vm, cpu, index: int, rsp0: int) -> None:
    """vCPU index's TSS (RSP0 = rsp0, no IST stacks, no I/O bitmap) and TR loaded with it,
    the descriptor marked busy as LTR leaves it."""
    base = TSS_BASE + TSS_STRIDE * index
    tss = bytearray(TSS64_LIMIT + 1)
    tss[TSS_RSP0:TSS_RSP0 + 8] = rsp0.to_bytes(8, "little")
    tss[TSS64_LIMIT - 1:] = (TSS64_LIMIT + 1).to_bytes(2, "little")   # I/O map base: none
    vm.write_gpa(base, bytes(tss))
    selector = tss_selector(index)
    desc = tss_descriptor(base, TSS64_LIMIT, DESC_TSS_BUSY)
    vm.write_gpa(GDT + selector, desc)
    cpu.set_segment("tr", tss_segment(selector, *struct.unpack("<QQ", desc)))


def check_machine(mem_size: int, nr_vcpus: int) -> None:
    if mem_size < MIN_MEM or mem_size > MAX_MEM:
        raise ConfigError(f"--mem must be between 2M and 1G (got {mem_size} bytes).")
    if mem_size % PAGE_SIZE:
        raise ConfigError("--mem must be a multiple of 4K.")
    if not 1 <= nr_vcpus <= MAX_VCPUS:
        raise ConfigError(f"--vcpus must be between 1 and {MAX_VCPUS} (got {nr_vcpus}).")


def build_page_tables(vm) -> None:
    """Identity map all RAM: 4 KiB pages below 128 MiB, 2 MiB pages above."""
    mem = vm.mem_size
    vm.write_gpa(PML4, (PDPT | P | RW).to_bytes(8, "little"))
    vm.write_gpa(PDPT, (PD | P | RW).to_bytes(8, "little"))
    n_2m = (mem + (2 << 20) - 1) >> 21
    pd = bytearray(PAGE_SIZE)
    for i in range(n_2m):
        base = i << 21
        if base < SMALL_PAGE_LIMIT:
            pt_gpa = PT0 + i * PAGE_SIZE
            pd[i * 8:i * 8 + 8] = (pt_gpa | P | RW).to_bytes(8, "little")
            pt = bytearray(PAGE_SIZE)
            for j in range(512):
                addr = base + (j << 12)
                if addr < mem:
                    pt[j * 8:j * 8 + 8] = (addr | P | RW).to_bytes(8, "little")
            vm.write_gpa(pt_gpa, pt)
        else:
            pd[i * 8:i * 8 + 8] = (base | P | RW | PS).to_bytes(8, "little")
    vm.write_gpa(PD, pd)


def boot(vm, program: Program, arg: int = 0) -> None:
    """Lay out memory and put every vCPU in the contract's start state."""
    end = program.address + len(program.code)
    if end > vm.mem_size:
        raise ConfigError(f"{program.path or 'program'}: {len(program.code)} bytes at "
                          f"{program.address:#x} do not fit in {vm.mem_size >> 20} MiB of RAM.")
    build_page_tables(vm)
    vm.write_gpa(GDT, b"".join(e.to_bytes(8, "little") for e in GDT_ENTRIES))
    vm.write_gpa(program.address, program.code)
    n = len(vm.vcpus)
    gdt_limit = tss_selector(n) - 1
    for v in vm.vcpus:
        c = v.cpu
        c.set_cr0(CR0_BOOT)
        c.set_cr4(CR4_BOOT)
        c.set_efer(EFER_BOOT & ~c.efer_reserved_bits)   # no NXE if CPUID has no NX
        c.set_cr3(PML4)
        c.gdtr = (GDT, gdt_limit)
        c.idtr = (0, 0)
        _load_segments(c, GDT_ENTRIES)
        _load_tr(vm, c, v.index, STACK_TOP - STACK_STRIDE * v.index)
        c.set_rflags(0x2)
        c.r[:] = [0] * 16
        c.r[RSP] = STACK_TOP - STACK_STRIDE * v.index
        c.r[RBP] = 0
        c.r[RDI] = v.index
        c.r[RSI] = n
        c.r[RDX] = arg & 0xFFFF_FFFF_FFFF_FFFF
        c.rip = program.address
        v.after_set_sregs()


def resolve_machine(kvm: str | None = None, knobs=(), vcpus: int = 1, mem="16M"):
    """(profile, RAM bytes) for the command-line options, or ConfigError naming what is wrong."""
    if mem is None:
        mem = "16M"
    try:
        size = parse_size(mem) if isinstance(mem, str) else int(mem)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_machine(size, vcpus)
    profile = get_profile(kvm or DEFAULT)
    for knob in knobs:
        profile = with_knob(profile, knob)
    return profile, size


def choose_machine(program: Program, machine: str | None = None):
    """The machine kind: --machine NAME, else pc for a multiboot image and raw otherwise."""
    from kvmdbg.kvm.machine import PC, RAW, get_machine
    kind = get_machine(machine) if machine else (PC if program.image is not None else RAW)
    if kind is RAW and program.image is not None:
        raise ConfigError(f"{program.path}: a multiboot image needs the pc machine "
                          f"(the raw machine loads flat binaries at {LOAD_ADDRESS:#x}).")
    if kind is PC and program.image is None:
        raise ConfigError(f"{program.path or 'program'}: the pc machine boots multiboot images; "
                          f"this is a raw binary (use --machine raw).")
    return kind


def make_vm(program: Program, kvm: str | None = None, knobs=(), vcpus: int = 1, mem=None,
            arg: int = 0, keep_events: int = 0, machine: str | None = None, append: str = "",
            cpu: str | None = None):
    """A VM built from the options and booted per the contract (events kept from boot on);
    a multiboot image boots on the PC machine (kvm/machine.py), with `append` as its command
    line. cpu: --cpu's text (kvm/cpuid.py parse_cpu_option)."""
    from kvmdbg.kvm.cpuid import parse_cpu_option
    from kvmdbg.kvm.machine import PC, pc_devices
    kind = choose_machine(program, machine)
    features = parse_cpu_option(cpu) if cpu else None
    profile, size = resolve_machine(kvm, knobs, vcpus, kind.default_mem if mem is None else mem)
    vm = Vm(size, vcpus, profile=profile)
    vm.machine = kind
    vm.cpu_features = features
    if keep_events:
        vm.bus.set_keep(keep_events)
    if kind is PC:
        vm.devices = pc_devices(vm)
        vm.vmm.attach(vm.devices)
        # QEMU's multiboot loader passes "KERNEL ARGS" (hw/i386/multiboot.c); the test
        # library's argv[0] is the first word.
        boot_multiboot(vm, program, f"{program.path} {append}")
    else:
        boot(vm, program, arg)
    return vm
