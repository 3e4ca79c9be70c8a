"""The PC machine's devices, each as small as the guests need (kvm/machine.py lists them).

Each device answers the port reads and writes (KVM_EXIT_IO) or MMIO accesses
(KVM_EXIT_MMIO) the VMM passes it. Port devices have `ports`; MMIO devices `mmio`
(base, size). `vm` is the Vm (struct kvm) for output, events and stopping the run.
"""

from __future__ import annotations

import struct

from kvmdbg.arch.msr_index import APIC_DEFAULT_PHYS_BASE
from kvmdbg.kvm import lapic
from kvmdbg.stop_reason import HALTED


class Device:
    name = ""
    summary = ""
    ports: tuple = ()
    mmio: tuple | None = None

    def __init__(self, vm):
        self.vm = vm

    def io_read(self, vcpu, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, vcpu, port: int, size: int, value: int) -> None:
        pass

    def port_text(self) -> str:
        if self.mmio is not None:
            base, size = self.mmio
            return f"mmio {base:#x}-{base + size - 1:#x}"
        ps = sorted(self.ports)
        if len(ps) > 1 and ps[-1] - ps[0] == len(ps) - 1:
            return f"{ps[0]:#x}-{ps[-1]:#x}"
        return ", ".join(f"{p:#x}" for p in ps)


# --- 16550 UART (National Semiconductor PC16550D datasheet, register table 2) ---

RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_THRE, LSR_TEMT = 0x20, 0x40
IIR_NO_INT = 0x01


class Serial16550(Device):
    """COM1 at 0x3f8. Transmission is instant: the line status always says the transmit
    holding register and the transmitter are empty, so a guest's busy-wait on LSR bit 5
    ends at once. Nothing is ever received (LSR data-ready stays 0)."""

    name = "serial"
    summary = "16550 UART (COM1): transmit to the console, line status always ready"

    def __init__(self, vm, base: int = 0x3F8):
        super().__init__(vm)
        self.base = base
        self.ports = tuple(range(base, base + 8))
        self.ier = self.lcr = self.mcr = self.scr = 0
        self.dll, self.dlm = 0x0C, 0          # 9600 baud after reset, as QEMU
        self.fcr = 0
        self.sent = bytearray()

    def io_read(self, vcpu, port, size):
        r = port - self.base
        dlab = self.lcr & LCR_DLAB
        if r == RBR_THR:
            return self.dll if dlab else 0
        if r == IER:
            return self.dlm if dlab else self.ier
        if r == IIR_FCR:
            return IIR_NO_INT | (0xC0 if self.fcr & 1 else 0)
        if r == LCR:
            return self.lcr
        if r == MCR:
            return self.mcr
        if r == LSR:
            return LSR_THRE | LSR_TEMT
        if r == MSR:
            return 0
        return self.scr

    def io_write(self, vcpu, port, size, value):
        r = port - self.base
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if r == RBR_THR:
            if dlab:
                self.dll = value
            else:
                self.transmit(vcpu, value)
        elif r == IER:
            if dlab:
                self.dlm = value
            else:
                self.ier = value & 0x0F
        elif r == IIR_FCR:
            self.fcr = value
        elif r == LCR:
            self.lcr = value
        elif r == MCR:
            self.mcr = value & 0x1F
        elif r == SCR:
            self.scr = value

    def transmit(self, vcpu, byte: int) -> None:
        self.sent.append(byte)
        vm = self.vm
        vm.trace("kvmdbg:serial", vcpu.index if vcpu is not None else -1, byte=byte)
        if byte != 0x0D:                # CR of the guest's CRLF: the console shows lines
            vm.console_write(byte)


# --- isa-debug-exit (QEMU hw/misc/debugexit.c) ---

class DebugExit(Device):
    """QEMU's isa-debug-exit (iobase 0xf4, iosize 4): a write of VALUE ends QEMU with exit
    status (VALUE << 1) | 1. Here the run stops and the process exit status is that."""

    name = "isa-debug-exit"
    summary = "a write ends the run: exit status (value << 1) | 1"

    def __init__(self, vm, base: int = 0xF4, size: int = 4):
        super().__init__(vm)
        self.ports = tuple(range(base, base + size))

    def io_write(self, vcpu, port, size, value):
        vm = self.vm
        status = ((value << 1) | 1) & 0xFF          # a process exit status is 8 bits
        vm.exit_status = status
        vm.exit_value = value
        vm.trace("kvmdbg:debug_exit", vcpu.index if vcpu is not None else -1, value=value,
                 status=status)
        for v in vm.vcpus:
            v.cpu.halted = True
        if vcpu is not None:
            vcpu.cpu.request_stop(HALTED)


# --- QEMU fw_cfg, the I/O port interface (docs/specs/fw_cfg.rst) ---

FW_CFG_SIGNATURE, FW_CFG_ID, FW_CFG_RAM_SIZE, FW_CFG_NB_CPUS = 0x00, 0x01, 0x03, 0x05
FW_CFG_MAX_CPUS, FW_CFG_MAX_RAM = 0x0F, 0x11
FW_CFG_KERNEL_CMDLINE = 0x09


class FwCfg(Device):
    """Selector at 0x510 (16-bit write), data at 0x511 (byte reads, the item's bytes in
    order, then zeros). Items: the "QEMU" signature, the interface ID (1: traditional
    interface, no DMA), RAM size, CPU count and maximum, the command line size.
    FW_CFG_MAX_RAM (0x11) is not an item upstream QEMU has, only kvm-unit-tests' local
    numbering for its MEMLIMIT override; unknown items read as zeros, as in QEMU."""

    name = "fw_cfg"
    summary = "QEMU firmware configuration: signature, ID, RAM size, CPU count"
    ports = (0x510, 0x511)

    def __init__(self, vm, nr_cpus: int, ram: int, cmdline: str = ""):
        super().__init__(vm)
        self.items = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: struct.pack("<I", 1),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram),
            FW_CFG_NB_CPUS: struct.pack("<H", nr_cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", nr_cpus),
        }
        self.selector = 0
        self.offset = 0

    def io_write(self, vcpu, port, size, value):
        if port == 0x510:
            self.selector = value & 0xFFFF
            self.offset = 0

    def io_read(self, vcpu, port, size):
        if port != 0x511:
            return (1 << (8 * size)) - 1
        data = self.items.get(self.selector & 0x3FFF, b"")
        out = 0
        for i in range(size):
            b = data[self.offset] if self.offset < len(data) else 0
            self.offset += 1
            out |= b << (8 * i)
        return out


# --- the legacy 8259 PICs' mask registers ---

class Pic(Device):
    """The two 8259As' data ports (0x21, 0xa1): the interrupt mask a guest sets to keep the
    legacy PIC quiet. The command ports (0x20, 0xa0) take writes and read as 0; nothing
    is ever raised (no interrupt controller logic)."""

    name = "pic"
    summary = "legacy 8259 PICs: mask registers (no interrupts raised)"
    ports = (0x20, 0x21, 0xA0, 0xA1)

    def __init__(self, vm):
        super().__init__(vm)
        self.imr = {0x21: 0, 0xA1: 0}

    def io_read(self, vcpu, port, size):
        return self.imr.get(port, 0)

    def io_write(self, vcpu, port, size, value):
        if port in self.imr:
            self.imr[port] = value & 0xFF


# --- the Bochs/QEMU shutdown port ---

class ShutdownPort(Device):
    """Port 0x8900: the string "Shutdown" written a byte at a time powers off (Bochs; the
    kvm-unit-tests library writes it when isa-debug-exit did not end the VM)."""

    name = "shutdown"
    summary = 'Bochs power-off: "Shutdown" written byte by byte stops the run'
    ports = (0x8900,)
    WORD = b"Shutdown"

    def __init__(self, vm):
        super().__init__(vm)
        self.seen = 0

    def io_write(self, vcpu, port, size, value):
        b = value & 0xFF
        self.seen = self.seen + 1 if b == self.WORD[self.seen] else (1 if b == self.WORD[0] else 0)
        if self.seen == len(self.WORD):
            self.seen = 0
            vm = self.vm
            if vm.exit_status is None:
                vm.exit_status = 0
            vm.trace("kvmdbg:poweroff", vcpu.index if vcpu is not None else -1)
            for v in vm.vcpus:
                v.cpu.halted = True
            if vcpu is not None:
                vcpu.cpu.request_stop(HALTED)


# --- local xAPIC, the MMIO page (Intel SDM vol. 3A, 11.4.1 and table 11-1) ---

APIC_ID, APIC_LVR, APIC_TPR, APIC_PPR, APIC_EOI, APIC_LDR, APIC_DFR, APIC_SPIV = \
    0x20, 0x30, 0x80, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
APIC_ESR, APIC_ICR, APIC_ICR2 = 0x280, 0x300, 0x310
APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR = \
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370
APIC_LVT_CMCI = 0x2F0
APIC_TMICT, APIC_TMCCT, APIC_TDCR = 0x380, 0x390, 0x3E0
APIC_SELF_IPI = 0x3F0                    # x2APIC mode only
APIC_ISR, APIC_IRR_END = 0x100, 0x270    # ISR, TMR, IRR: 0x100-0x270, read as 0 (no interrupts)
LVT_MASKED = 1 << 16
ICR_BUSY = 1 << 12
APIC_VERSION = 0x14 | (6 << 16)          # version 0x14 (xAPIC), max LVT entry 6 (7 LVTs)
LVTS = (APIC_LVT_CMCI, APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR)


class LocalApic(Device):
    """One local xAPIC page per vCPU at 0xfee00000 (each vCPU sees its own; the vCPU doing
    the access picks which). Registers hold what is written to them, with the reset values
    of SDM 11.4.7.1 (LVTs masked, SPIV 0xff, DFR all ones); ID and version are read-only,
    EOI is write-only, the ICR's delivery status always reads idle (an IPI is sent at once;
    none is delivered, no interrupt is modelled). IA32_APICBASE (0x1b) is the vCPU's
    (kvm/lapic.py): while it says disabled or x2APIC mode the page reads all ones and
    ignores writes (KVM's apic_mmio_read/write with KVM_X86_QUIRK_LAPIC_MMIO_HOLE); a moved
    base is not followed: the page stays at 0xfee00000."""

    name = "lapic"
    summary = "local xAPIC registers (ID, version, TPR, SPIV, EOI, LVTs, ICR idle)"
    mmio = (APIC_DEFAULT_PHYS_BASE, 0x1000)

    def __init__(self, vm, nr_cpus: int):
        super().__init__(vm)
        self.regs = [self._reset(i) for i in range(nr_cpus)]
        self.eois = 0
        self.ipis: list[tuple[int, int, int]] = []     # (vcpu, icr2, icr) of each ICR write

    @staticmethod
    def _reset(index: int) -> dict[int, int]:
        r = {APIC_ID: index << 24, APIC_LVR: APIC_VERSION, APIC_TPR: 0, APIC_LDR: 0,
             APIC_DFR: 0xFFFFFFFF, APIC_SPIV: 0xFF, APIC_ESR: 0, APIC_ICR: 0, APIC_ICR2: 0,
             APIC_TMICT: 0, APIC_TDCR: 0}
        for lvt in LVTS:
            r[lvt] = LVT_MASKED
        return r

    def _regs(self, vcpu):
        i = vcpu.index if vcpu is not None and vcpu.index < len(self.regs) else 0
        return self.regs[i]

    @staticmethod
    def _hole(vcpu) -> bool:
        """The MMIO page does not answer: the APIC is disabled or in x2APIC mode."""
        return vcpu is not None and (not lapic.kvm_apic_hw_enabled(vcpu)
                                     or lapic.apic_x2apic_mode(vcpu))

    def read(self, vcpu, offset: int, size: int) -> int:
        if self._hole(vcpu):
            return (1 << (8 * size)) - 1
        return self._reg_read(vcpu, offset, size)

    def _reg_read(self, vcpu, offset: int, size: int) -> int:
        reg = offset & 0xFF0
        r = self._regs(vcpu)
        if reg == APIC_PPR:
            value = r[APIC_TPR]
        elif reg == APIC_ICR:
            value = r[APIC_ICR] & ~ICR_BUSY
        elif reg == APIC_TMCCT:
            value = 0
        else:
            value = r.get(reg, 0)
        value >>= 8 * (offset & 3)
        return value & ((1 << (8 * size)) - 1)

    def write(self, vcpu, offset: int, size: int, value: int) -> None:
        if self._hole(vcpu):
            return
        self._reg_write(vcpu, offset, size, value)

    def _reg_write(self, vcpu, offset: int, size: int, value: int) -> None:
        reg = offset & 0xFF0
        r = self._regs(vcpu)
        value &= 0xFFFFFFFF
        if reg in (APIC_ID, APIC_LVR, APIC_PPR, APIC_TMCCT):
            return                                 # read-only here
        if reg == APIC_EOI:
            self.eois += 1
            return
        if reg == APIC_TPR:
            value &= 0xFF
        elif reg == APIC_SPIV:
            value &= 0x13FF
        elif reg == APIC_ESR:
            value = 0
        elif reg == APIC_ICR:
            self.ipis.append((vcpu.index if vcpu is not None else 0, r[APIC_ICR2], value))
            value &= ~ICR_BUSY
        r[reg] = value

    # --- x2APIC mode: the registers as MSRs 0x800 + offset / 16 (SDM 11.12.1, 11.12.10;
    # KVM's kvm_x2apic_msr_read / kvm_x2apic_msr_write, v6.12) ---

    _X2APIC_READABLE = frozenset((APIC_ID, APIC_LVR, APIC_TPR, APIC_PPR, APIC_LDR, APIC_SPIV,
                                  APIC_ESR, APIC_ICR, APIC_TMICT, APIC_TMCCT, APIC_TDCR,
                                  *LVTS, *range(APIC_ISR, APIC_IRR_END + 1, 0x10)))
    # kvm_lapic_reg_write in x2APIC mode: ID, LDR, DFR, ICR2 and the read-only registers
    # refuse writes (#GP); SELF_IPI exists only here.
    _X2APIC_WRITABLE = frozenset((APIC_TPR, APIC_EOI, APIC_SPIV, APIC_ESR, APIC_ICR,
                                  APIC_TMICT, APIC_TDCR, APIC_SELF_IPI, *LVTS))

    def set_x2apic_id(self, vcpu) -> None:
        """kvm_apic_set_x2apic_id on entering x2APIC mode: the 32-bit ID is the vCPU's and
        the logical ID is derived from it (SDM 11.12.10.2)."""
        r = self._regs(vcpu)
        i = vcpu.index
        r[APIC_ID] = i
        r[APIC_LDR] = ((i >> 4) << 16) | (1 << (i & 0xF))

    def set_xapic_id(self, vcpu) -> None:
        """kvm_apic_set_xapic_id on (re-)entering xAPIC mode: ID in bits 31:24."""
        self._regs(vcpu)[APIC_ID] = vcpu.index << 24

    def x2apic_msr_read(self, vcpu, reg: int):
        """The register's value, or None (#GP: not readable in x2APIC mode)."""
        if reg not in self._X2APIC_READABLE:
            return None
        if reg == APIC_ICR:
            r = self._regs(vcpu)
            return (r[APIC_ICR] & ~ICR_BUSY) | r[APIC_ICR2] << 32     # one 64-bit ICR
        return self._reg_read(vcpu, reg, 4)

    def x2apic_msr_write(self, vcpu, reg: int, value: int) -> bool:
        """False is #GP: not writable, bits 63:32 set outside the ICR, or ESR != 0."""
        if reg not in self._X2APIC_WRITABLE:
            return False
        if reg == APIC_ICR:
            self._regs(vcpu)[APIC_ICR2] = value >> 32         # the destination, 32 bits
            self._reg_write(vcpu, APIC_ICR, 4, value & 0xFFFFFFFF)
            return True
        if value >> 32 or (reg == APIC_ESR and value):
            return False
        if reg == APIC_SELF_IPI:
            self.ipis.append((vcpu.index, vcpu.index, value & 0xFF))   # vector to self
            return True
        self._reg_write(vcpu, reg, 4, value)
        return True
