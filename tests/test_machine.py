"""The boot contract (design section 3), sparse memory, devices and the decode cache."""

import tracemalloc

from kvmdbg.cpu.executor import run
from kvmdbg.kvm.boot import GDT, PD, PDPT, PML4, PT0
from tests.helpers import asm, machine, patch_loop


def q(vm, gpa):
    return int.from_bytes(vm.read_gpa(gpa, 8), "little")


def test_page_tables_identity_map_with_4k_then_2m_pages():
    vm, cpu = machine(b"\xf4", mem=256 << 20)
    assert q(vm, PML4) == PDPT | 3 and q(vm, PDPT) == PD | 3
    assert q(vm, PD) == PT0 | 3                        # first 2 MiB: a page table
    assert q(vm, PT0 + 8 * 0x100) == 0x100000 | 3      # 4 KiB page, P|RW, supervisor
    assert q(vm, PD + 8 * 63) == (PT0 + 63 * 4096) | 3  # last 4 KiB-mapped 2 MiB
    assert q(vm, PD + 8 * 64) == (128 << 20) | 0x83    # 2 MiB page above 128 MiB
    for va in (0x1234, 0x100000, 0x7FF_F000, 0x800_0000, 0xFFF_FFF8):
        assert cpu.translate(va, 0).gpa == va & ~0xFFF


def test_gdt_and_long_mode_state():
    vm, cpu = machine(b"\xf4")
    # null, code64 DPL 0, data DPL 0, code64 DPL 3, data DPL 3, all accessed (SDM Vol. 3A
    # 3.4.5), then the vCPU's 64-bit TSS descriptor: base 0x600, limit 0x67, type 0xB (busy:
    # TR holds it).
    assert [q(vm, GDT + 8 * i) for i in range(7)] == [
        0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00AFFB000000FFFF, 0x00CFF3000000FFFF,
        0x00008B0006000067, 0]
    assert cpu.gdtr == (GDT, 0x37) and cpu.idtr == (0, 0)
    assert cpu.tr == 0x28 and q(vm, 0x600 + 4) == 0x80000     # RSP0 = the boot stack
    assert (cpu.cr0, cpu.cr4, cpu.efer, cpu.cr3) == (0x80010033, 0x620, 0xD00, 0x1000)
    assert cpu.get_rflags() == 2 and cpu.cs == 8 and cpu.ss == 0x10


def test_vcpus_start_per_contract():
    vm, _ = machine(b"\xf4", vcpus=4, arg=99)
    for v in vm.vcpus:
        c = v.cpu
        assert c.rip == 0x100000
        assert c.r[4] == 0x80000 - 0x4000 * v.index
        assert (c.r[7], c.r[6], c.r[2]) == (v.index, 4, 99)


def test_one_gigabyte_guest_is_sparse():
    tracemalloc.start()
    vm, cpu = machine(asm("mov rax, 0x3ff00000; mov [rax], rax; hlt"), mem=1 << 30)
    run(cpu, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Page tables (4 + 64 PT pages), the GDT, code, stack, one data page: ~75 host pages.
    assert vm.host.touched_pages() < 100
    assert peak < 8 << 20
    assert q(vm, 0x3FF00000) == 0x3FF00000


def test_console_port_and_vmm_ports_are_recorded():
    vm, cpu = machine(asm("mov al, 0x68; out 0xe9, al; mov al, 0x69; out 0xe9, al;"
                          "mov dx, 0x512; mov eax, 7; out dx, eax; hlt"))
    assert run(cpu, 100) == "halted"
    assert vm.console == b"hi"
    assert vm.io_exits == [(0, 0x512, 4, 7)]


def test_mmio_reads_all_ones_and_writes_are_recorded():
    vm, cpu = machine(asm("mov rbx, 0x800000; mov rax, [rbx]; mov dword ptr [rbx], 5; hlt"),
                      mem=4 << 20)
    # 0x800000 is mapped by the guest page tables (2 MiB page) but has no memslot: MMIO.
    vm.write_gpa(PD + 8 * 4, (0x800000 | 0x83).to_bytes(8, "little"))
    assert run(cpu, 10) == "halted"
    assert cpu.r[0] == 0xFFFF_FFFF_FFFF_FFFF
    assert vm.mmio_writes == [(0, 0x800000, 4, 5)]


def test_self_modifying_code_is_seen_at_once():
    # The loop rewrites the immediate of 'mov eax, imm32' that runs right after the store.
    # EDX keeps each pass's value in its own hex digit (a plain sum could not tell stale
    # code from new: 0 + 3 + 3 == 3 + 2 + 1).
    vm, cpu = machine(patch_loop(3))
    assert run(cpu, 1000) == "halted"
    assert cpu.r[2] == 0x321
    assert vm.decode_cache.dropped > 0


def test_code_written_by_the_vmm_is_redecoded():
    vm, cpu = machine(asm("mov eax, 1; hlt"))
    assert run(cpu, 10) == "halted" and cpu.r[0] == 1
    vm.write_gpa(0x100001, (2).to_bytes(4, "little"))
    cpu.halted = False
    cpu.rip = 0x100000
    assert run(cpu, 10) == "halted" and cpu.r[0] == 2


def test_decode_once_per_address():
    vm, cpu = machine(asm("mov ecx, 1000; l: inc rax; dec ecx; jnz l; hlt"))
    run(cpu, 100_000)
    assert cpu.r[0] == 1000
    assert vm.decode_cache.decoded_codes() <= 6


def test_rdtsc_counts_simulated_cycles_exactly():
    vm, cpu = machine(asm("nop; nop; nop; rdtsc; hlt"))
    run(cpu, 10)
    assert cpu.r[0] == 3      # three instructions retired before it (one cycle each, for now)
