"""info (the prefix and its list), info registers, info cr, info program.

Other families add `info` subcommands with reg.sub("info").add(...); this module
only has to be registered before them (commands/__init__.FAMILIES).
"""

from __future__ import annotations

from kvmdbg.cpu.regs import CR0_BITS, CR4_BITS, EFER_BITS
from kvmdbg.debug.commands.registry import list_subcommands, no_arguments
from kvmdbg.debug.present.formats import (GROUPS, cr3_text, flag_names, format_register_row,
                                  register_rows)
from kvmdbg.debug.present.report import changed_registers
from kvmdbg.errors import CommandError

# Bits that are inputs of kvm_calc_cpu_role (KVM_MMU_CR0_ROLE_BITS, KVM_MMU_CR4_ROLE_BITS,
# EFER.NX and EFER.LMA; kvm-mmu-spec 3.4): changing one can reset the MMU context.
ROLE_BITS = {"cr0": {"PG", "WP"}, "cr4": {"PSE", "PAE", "SMEP", "SMAP", "PKE", "LA57"},
             "efer": {"NXE", "LMA"}}

BIT_MEANINGS = {
    "PE": "protection enable", "MP": "monitor coprocessor", "EM": "x87 emulation",
    "TS": "task switched", "ET": "extension type", "NE": "numeric error",
    "WP": "write protect (supervisor writes honour R/W)", "AM": "alignment mask",
    "NW": "not write-through", "CD": "cache disable", "PG": "paging",
    "VME": "virtual-8086 extensions", "PVI": "protected-mode virtual interrupts",
    "TSD": "time stamp disable", "DE": "debugging extensions", "PSE": "page size extensions",
    "PAE": "physical address extension", "MCE": "machine check enable",
    "PGE": "global pages", "PCE": "performance counters", "OSFXSR": "FXSAVE/FXRSTOR",
    "OSXMMEXCPT": "SIMD exceptions", "UMIP": "user-mode instruction prevention",
    "LA57": "5-level paging", "VMXE": "VMX enable", "SMXE": "SMX enable",
    "FSGSBASE": "RDFSBASE and friends", "PCIDE": "process-context identifiers",
    "OSXSAVE": "XSAVE", "SMEP": "supervisor-mode execution prevention",
    "SMAP": "supervisor-mode access prevention", "PKE": "protection keys",
    "SCE": "SYSCALL", "LME": "long mode enable", "LMA": "long mode active",
    "NXE": "no-execute enable",
}


def info(s, arg: str) -> None:
    """info SUBCOMMAND

    Show things about the guest and the KVM model. "info" alone lists the subcommands.
    """
    list_subcommands(s, "info", "an info command")


def info_registers(s, arg: str, every: bool = False) -> None:
    """info registers [REG...]

    Registers of the current vCPU in gdb's three columns: name, hex value, natural
    value (RFLAGS, CR0, CR3, CR4, EFER decoded in brackets), in gdb's order: rax rbx rcx
    rdx rsi rdi rbp rsp r8-r15 rip eflags, the selectors cs ss ds es fs gs, fs_base
    gs_base k_gs_base, cr0 cr2 cr3 cr4 cr8 efer. `*` marks a register that changed since
    the previous stop. A group name shows that group: general (the GPRs, rip, eflags),
    segment (selectors, bases, gdtr, idtr), system (CRs, EFER, PAT, TSC_AUX, PKRU), all
    (as `info all-registers`).
    """
    rows = register_rows(s.cpu, s.symbols, every=True)
    changed = changed_registers(s, s.current)
    wanted = [w.lstrip("$") for w in arg.split()]
    by_name = {r[0]: r for r in rows}
    if not wanted:
        rows = rows if every else register_rows(s.cpu, s.symbols)
    else:
        aliases = {"rflags": "eflags", "pc": "rip", "sp": "rsp", "fp": "rbp",
                   "kernel_gs_base": "k_gs_base"}
        picked = []
        for w in wanted:
            key = aliases.get(w, w)
            if key in GROUPS:
                picked.extend(by_name[n] for n in GROUPS[key])
            elif key == "all":
                picked.extend(rows)
            elif key in by_name:
                picked.append(by_name[key])
            else:
                raise CommandError(f"Invalid register `{w}'")
        rows = picked
    for name, value, natural in rows:
        s.message(format_register_row(name, value, natural, name in changed))


def info_all_registers(s, arg: str) -> None:
    """info all-registers [REG...]

    Every register the CPU model holds: those of `info registers`, then the descriptor
    tables (gdtr, idtr: base and limit), PAT (decoded), TSC_AUX and PKRU. There are no
    x87/SSE, debug (DR0-DR7) or segment-descriptor registers in the model to show.
    """
    info_registers(s, arg, every=True)


def info_cr(s, arg: str) -> None:
    """info cr

    CR0, CR2, CR3, CR4 and EFER with every defined bit decoded; `role` marks the bits
    that feed KVM's MMU role (kvm_calc_cpu_role), whose change can reset the MMU context.
    """
    no_arguments(info_cr, arg)
    cpu = s.cpu
    for name, value, bits in (("cr0", cpu.cr0, CR0_BITS), ("cr4", cpu.cr4, CR4_BITS),
                              ("efer", cpu.efer, EFER_BITS)):
        s.message(f"{name:<6}{value:#x} {flag_names(value, bits, True)}")
        for bit_name, bit in bits:
            role = "role" if bit_name in ROLE_BITS.get(name, ()) else ""
            s.message(f"  {bit:>2} {bit_name:<11}{value >> bit & 1}  {role:<4}  "
                      f"{BIT_MEANINGS.get(bit_name, '')}".rstrip())
        if name == "cr0":
            s.message(f"cr2   {cpu.cr2:#x}  (last page-fault address)")
            s.message(f"cr3   {cpu.cr3:#x} {cr3_text(cpu.cr3, bool(cpu.cr4 >> 17 & 1))}")
    s.message("role: an input of kvm_calc_cpu_role; changing it can unload the MMU roots.")


def info_program(s, arg: str) -> None:
    """info program

    Where the program is: the selected vCPU, its step, and why it last stopped.
    """
    no_arguments(info_program, arg)
    st = s.last_stop
    cpu = s.cpu
    if st is None and not any(v.cpu.steps for v in s.vm.vcpus):
        s.message(f"The program is at its boot state: {s.location(cpu.rip)}, vcpu {s.current}, "
                  "step 0.")
        return
    why = f" It stopped because of: {st.reason}." if st is not None else ""
    s.message(f"The program is stopped at {s.location(cpu.rip)}, vcpu {s.current}, step "
              f"{cpu.steps}.{why}")


def creg(s, arg: str) -> None:
    """creg

    The Bochs name for `info cr`.
    """
    no_arguments(creg, arg)
    info_cr(s, arg)


def info_machine(s, arg: str) -> None:
    """info machine

    The machine kind (raw: kvmdbg's boot contract; pc: a PC for multiboot images, as
    QEMU's -M pc), its RAM and vCPUs, and each device with the ports or MMIO range it
    answers. Ports no device answers read as all ones; on the pc machine they are listed
    when the run ends.
    """
    no_arguments(info_machine, arg)
    from kvmdbg.kvm.machine import describe
    for line in describe(s.vm):
        s.message(line)


def register(reg) -> None:
    reg.add("info", info, aliases=("i", "inf"), category="status")
    sub = reg.sub("info")
    sub.add("registers", info_registers, aliases=("r", "reg"), category="data")
    sub.add("all-registers", info_all_registers, category="data")
    sub.add("cr", info_cr, category="data")
    sub.add("program", info_program, category="status")
    sub.add("machine", info_machine, category="status")
    reg.add("creg", creg, category="data")
