"""The pc machine's devices, each against its own reference: the PC16550D datasheet (UART
registers), QEMU's isa-debug-exit and fw_cfg (docs/specs/fw_cfg.rst), the 8259A's mask
register, the Intel SDM vol. 3A chapter 11 (local APIC), and what kvm-unit-tests'
lib/x86 (io.c, fwcfg.c, apic.c) reads and writes. Port accesses go through the VMM's exit
handler, as a KVM_EXIT_IO does; one test drives them from guest code."""

from __future__ import annotations

import struct

import pytest

from kvmdbg.kvm.boot import Program, boot, load_program, make_vm
from kvmdbg.kvm.machine import pc_devices
from tests.helpers import asm


def mb_image(tmp_path):
    magic, flags = 0x1BADB002, 0
    hdr = struct.pack("<III", magic, flags, -(magic + flags) & 0xFFFFFFFF)
    code = hdr + b"\xf4"
    eh = (b"\x7fELF" + bytes([1, 1, 1]) + bytes(9) +
          struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x20000c, 52, 0, 0, 52, 32, 1, 40, 0, 0))
    ph = struct.pack("<8I", 1, 84, 0x200000, 0x200000, len(code), len(code), 5, 4)
    p = tmp_path / "tiny.elf"
    p.write_bytes(eh + ph + code)
    return str(p)


@pytest.fixture
def pc(tmp_path):
    vm = make_vm(load_program(mb_image(tmp_path)), vcpus=2, keep_events=1000)
    return vm, vm.vcpus[0]


def io_in(vm, v, port, size=1):
    return vm.vmm.handle_io(v, port, size, None)


def io_out(vm, v, port, value, size=1):
    vm.vmm.handle_io(v, port, size, value)


# --- 16550 ---

def test_uart_line_status_says_transmitter_empty(pc):
    vm, v = pc
    assert io_in(vm, v, 0x3FD) & 0x60 == 0x60       # LSR: THRE and TEMT
    assert io_in(vm, v, 0x3FD) & 0x01 == 0          # no data ready
    assert io_in(vm, v, 0x3FA) & 0x01 == 1          # IIR: no interrupt pending


def test_uart_transmits_to_console_and_event_log(pc):
    vm, v = pc
    for ch in b"ok\r\n":
        io_out(vm, v, 0x3F8, ch)
    assert bytes(vm.console) == b"ok\n"              # CR of CRLF dropped on the console
    sent = [e.fields["byte"] for e in vm.bus.log if e.name == "kvmdbg:serial"]
    assert sent == list(b"ok\r\n")                   # the log has every byte


def test_uart_divisor_latch_is_not_transmitted(pc):
    vm, v = pc
    io_out(vm, v, 0x3FB, 0x83)                       # LCR: DLAB, 8N1
    io_out(vm, v, 0x3F8, 0x01)                       # DLL
    io_out(vm, v, 0x3F9, 0x00)                       # DLM
    assert io_in(vm, v, 0x3F8) == 0x01 and io_in(vm, v, 0x3FB) == 0x83
    io_out(vm, v, 0x3FB, 0x03)
    assert bytes(vm.console) == b""
    io_out(vm, v, 0x3FF, 0x5A)                       # scratch register
    assert io_in(vm, v, 0x3FF) == 0x5A


# --- isa-debug-exit ---

@pytest.mark.parametrize("code, status", [(0, 1), (1, 3), (38, 77)])
def test_debug_exit_status_is_qemus(pc, code, status):
    vm, v = pc
    io_out(vm, v, 0xF4, code, size=4)
    assert vm.exit_status == status                  # (code << 1) | 1; 77 is SKIP
    assert all(x.cpu.halted for x in vm.vcpus)


# --- fw_cfg ---

def fw_read(vm, v, key, n):
    io_out(vm, v, 0x510, key, size=2)
    return bytes(io_in(vm, v, 0x511) for _ in range(n))


def test_fw_cfg_items(pc):
    vm, v = pc
    assert fw_read(vm, v, 0x00, 4) == b"QEMU"                       # signature
    assert struct.unpack("<I", fw_read(vm, v, 0x01, 4))[0] & 1      # traditional interface
    assert struct.unpack("<H", fw_read(vm, v, 0x05, 2))[0] == 2     # FW_CFG_NB_CPUS
    assert struct.unpack("<Q", fw_read(vm, v, 0x03, 8))[0] == 128 << 20
    assert fw_read(vm, v, 0x11, 8) == bytes(8)       # MAX_RAM: 0, the library's "no limit"
    assert fw_read(vm, v, 0x00, 6) == b"QEMU\0\0"    # past the end: zeros


# --- PIC ---

def test_pic_masks(pc):
    vm, v = pc
    io_out(vm, v, 0x21, 0xFF)                        # as lib/x86/apic.c mask_pic_interrupts
    io_out(vm, v, 0xA1, 0xFB)
    assert io_in(vm, v, 0x21) == 0xFF and io_in(vm, v, 0xA1) == 0xFB


# --- the Bochs shutdown port ---

def test_shutdown_string_stops(pc):
    vm, v = pc
    for ch in b"Shut":
        io_out(vm, v, 0x8900, ch)
    assert not vm.vcpus[0].cpu.halted
    for ch in b"down":
        io_out(vm, v, 0x8900, ch)
    assert vm.vcpus[0].cpu.halted and vm.exit_status == 0


# --- local xAPIC (SDM 11.4) ---

APIC = 0xFEE00000


def test_lapic_registers(pc):
    vm, v0 = pc
    v1 = vm.vcpus[1]
    rd = vm.vmm.mmio_read
    assert rd(v0, APIC + 0x20, 4) >> 24 == 0 and rd(v1, APIC + 0x20, 4) >> 24 == 1   # ID
    ver = rd(v0, APIC + 0x30, 4)
    assert 0x10 <= ver & 0xFF <= 0x15 and (ver >> 16) & 0xFF >= 3   # xAPIC, max LVT
    assert rd(v0, APIC + 0xF0, 4) == 0xFF                          # SPIV reset (11.4.7.1)
    for lvt in (0x320, 0x350, 0x360, 0x370):
        assert rd(v0, APIC + lvt, 4) & (1 << 16)                   # masked after reset
    vm.vmm.mmio_write(v0, APIC + 0x80, 4, 0x20)                    # TPR
    assert rd(v0, APIC + 0x80, 4) == 0x20 and rd(v1, APIC + 0x80, 4) == 0
    vm.vmm.mmio_write(v0, APIC + 0xF0, 4, 0x1FF)                   # SPIV: enable, vector ff
    assert rd(v0, APIC + 0xF0, 4) == 0x1FF
    vm.vmm.mmio_write(v0, APIC + 0x310, 4, 1 << 24)
    vm.vmm.mmio_write(v0, APIC + 0x300, 4, 0x4500 | (1 << 12))     # INIT, busy bit set
    assert not rd(v0, APIC + 0x300, 4) & (1 << 12)                 # delivery status idle
    vm.vmm.mmio_write(v0, APIC + 0xB0, 4, 0)                       # EOI
    assert vm.devices[4].eois == 1
    vm.vmm.mmio_write(v0, APIC + 0x20, 4, 5 << 24)                 # ID is read-only here
    assert rd(v0, APIC + 0x20, 4) >> 24 == 0


# --- unmodelled ports and MMIO, listed once ---

def test_unmodelled_listed_once(pc):
    vm, v = pc
    io_in(vm, v, 0x61)
    io_in(vm, v, 0x61)
    io_out(vm, v, 0x80, 1)
    vm.vmm.mmio_read(v, 0xFEC00000, 4)
    lines = vm.vmm.unmodelled_lines()
    assert lines == ["ports read but not modelled: 0x61", "ports written but not modelled: 0x80",
                     "MMIO pages used but not modelled: 0xfec00000"]
    assert vm.vmm.unmodelled_lines() == []
    assert io_in(vm, v, 0x61) == 0xFF                # today's behaviour: all ones


def test_pc_ports_take_precedence_over_vmm_ports(pc):
    vm, v = pc
    io_out(vm, v, 0x510, 0x1000, size=2)             # would overlay gfn 0x1000 on raw
    assert vm.vmm.overlays == {}
    assert vm.stats["kvmdbg_memslot_changes"] == 0


# --- from guest code: a pc machine whose vCPU is put in long mode per the raw contract ---

def test_guest_code_prints_on_com1_and_exits(tmp_path):
    from kvmdbg.debug.engine.session import Session
    vm = make_vm(load_program(mb_image(tmp_path)))
    code = asm("""
        mov dx, 0x3f8
        lea rsi, [rip + msg]
    next:
        mov bl, byte ptr [rsi]
        test bl, bl
        jz done
    wait:
        mov dx, 0x3fd
        in al, dx
        test al, 0x20
        jz wait
        mov dx, 0x3f8
        mov al, bl
        out dx, al
        inc rsi
        jmp next
    done:
        mov dx, 0x61
        in al, dx
        mov eax, 38
        mov dx, 0xf4
        out dx, eax
        hlt
    msg:
        .byte 0x50, 0x41, 0x53, 0x53, 0x0d, 0x0a, 0
    """)
    prog = Program(code)
    boot(vm, prog)                        # 64-bit entry state, so the CPU can run it
    lines = []
    s = Session(vm, prog, out=lines.append, err=lines.append)
    s.run_command("continue")
    assert "PASS" in lines
    assert vm.exit_status == 77
    assert any(l.startswith("[Guest exited: isa-debug-exit (port 0xf4) written 0x26, exit "
                            "status 77]") for l in lines)
    assert "ports read but not modelled: 0x61" in lines
    s.run_command("print $_exitcode")
    assert lines[-1].endswith("= 77")
