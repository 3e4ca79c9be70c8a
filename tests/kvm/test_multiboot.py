"""The multiboot v1 loader and the pc machine's entry state, against the Multiboot
Specification 0.6.96 (3.1 header, 3.2 machine state, 3.3 boot information) and the
images' own ELF program headers, read here with struct (not the loader's pyelftools)."""

from __future__ import annotations

import struct

import pytest

from kvmdbg.cpu.regs import CR0_PE, CR0_PG, EFER_LMA, RAX, RBX
from kvmdbg.errors import ConfigError, UnsupportedMode
from kvmdbg.kvm.boot import load_program, make_vm
from tests.helpers import kut_image

IMAGES = ("smap.flat", "pku.flat", "pcid.flat", "access_test.flat")
MB_MAGIC, MB_EAX = 0x1BADB002, 0x2BADB002


def elf32_loads(data: bytes):
    """(entry, [(paddr, file bytes, memsz)]) from an ELF32 file's program headers."""
    assert data[:4] == b"\x7fELF" and data[4] == 1          # ELFCLASS32
    entry, phoff = struct.unpack_from("<II", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    out = []
    for i in range(phnum):
        p_type, off, _va, pa, filesz, memsz, _f, _a = struct.unpack_from(
            "<8I", data, phoff + i * phentsize)
        if p_type == 1 and memsz:
            out.append((pa, data[off:off + filesz], memsz))
    return entry, out


def read_mbi(vm, addr):
    raw = vm.peek_gpa(addr, 52)
    flags, mem_lower, mem_upper, boot_device, cmdline = struct.unpack_from("<5I", raw, 0)
    mmap_length, mmap_addr = struct.unpack_from("<II", raw, 44)
    return dict(flags=flags, mem_lower=mem_lower, mem_upper=mem_upper, cmdline=cmdline,
                mmap_length=mmap_length, mmap_addr=mmap_addr)


def c_string(vm, addr):
    raw = vm.peek_gpa(addr, 4096)
    return raw[:raw.index(0)].decode()


def mmap_entries(vm, addr, length):
    out, at = [], addr
    while at < addr + length:
        size, = struct.unpack("<I", vm.peek_gpa(at, 4))
        base, ln, kind = struct.unpack("<QQI", vm.peek_gpa(at + 4, 20))
        out.append((base, ln, kind))
        at += size + 4                   # spec 3.3: size does not count itself
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_kut_image_loads_as_the_spec_says(name):
    path = kut_image(name)
    data = path.read_bytes()
    entry, loads = elf32_loads(data)
    prog = load_program(str(path))
    vm = make_vm(prog, append="-v x=1")
    assert vm.machine.name == "pc"
    assert vm.mem_size == 128 << 20                    # QEMU's default RAM
    for paddr, filebytes, memsz in loads:
        assert vm.peek_gpa(paddr, len(filebytes)) == filebytes
        tail = memsz - len(filebytes)
        assert vm.peek_gpa(paddr + len(filebytes), min(tail, 1 << 16)) == bytes(min(tail, 1 << 16))
    c = vm.vcpus[0].cpu
    assert c.rip == entry
    assert c.r[RAX] == MB_EAX
    # spec 3.2: protected mode, paging off, IF clear, VM clear
    assert c.cr0 & CR0_PE and not c.cr0 & CR0_PG
    assert not c.efer & EFER_LMA
    assert not c.get_rflags() & (1 << 9) and not c.get_rflags() & (1 << 17)
    mbi = read_mbi(vm, c.r[RBX])
    assert mbi["flags"] & 1 and mbi["flags"] & 4 and mbi["flags"] & 64
    assert mbi["mem_lower"] <= 640
    assert mbi["mem_upper"] == (128 << 20) // 1024 - 1024     # KiB from 1 MiB
    assert c_string(vm, mbi["cmdline"]).endswith(" -v x=1")
    entries = mmap_entries(vm, mbi["mmap_addr"], mbi["mmap_length"])
    usable = [(b, ln) for b, ln, k in entries if k == 1]
    assert (0x100000, (128 << 20) - 0x100000) in usable
    assert all(b + ln <= 0xA0000 or b >= 0x100000 for b, ln in usable)   # no RAM in the hole


def elf32_symtab(data: bytes) -> dict:
    """name -> st_value of the ELF32 .symtab, read with struct (ELF gABI section 4)."""
    shoff, = struct.unpack_from("<I", data, 32)
    shentsize, shnum = struct.unpack_from("<HH", data, 46)
    secs = [struct.unpack_from("<10I", data, shoff + i * shentsize) for i in range(shnum)]
    out = {}
    for _name, sh_type, _f, _a, off, size, link, _i, _al, entsize in secs:
        if sh_type != 2:                        # SHT_SYMTAB
            continue
        stroff = secs[link][4]
        for at in range(off, off + size, entsize):
            st_name, st_value = struct.unpack_from("<II", data, at)
            end = data.index(b"\0", stroff + st_name)
            out.setdefault(data[stroff + st_name:end].decode(), st_value)
    return out


def test_symbols_come_from_the_elf_symbol_table():
    path = kut_image("smap.flat")
    data = path.read_bytes()
    oracle = elf32_symtab(data)
    prog = load_program(str(path))
    for name in ("main", "start", "report", "ap_start32"):
        assert prog.symbols[name] == oracle[name]
    # the header's entry is the `start` label (cstart64.S); main is 64-bit code in the
    # first loaded segment, at the address the 64-bit code runs at (identity mapped)
    assert prog.symbols["start"] == struct.unpack_from("<I", data, 24)[0]
    _entry, loads = elf32_loads(data)
    pa, blob, _ = loads[0]
    assert pa <= prog.symbols["main"] < pa + len(blob)


def test_break_main_and_info_symbol_on_smap():
    from kvmdbg.debug.engine.session import Session
    path = kut_image("smap.flat")
    main = elf32_symtab(path.read_bytes())["main"]
    s = Session.load(str(path))
    assert f"Breakpoint 1 at {main:#x}" in s.execute("break main")
    assert s.execute(f"info symbol {main + 4:#x}").startswith("main + 4")


@pytest.mark.parametrize("kvm", ["v6.12", "shadow", "v5.15"])
def test_entry_code_reaches_64_bit_mode_as_cstart64_says(kvm):
    """x86/cstart64.S's start: GS base = stacktop - per_cpu_size (setup_percpu_area), the
    multiboot info pointer stored at mb_boot_info, CR3 = ptl4, CR4.PAE, EFER.LME, CR0.PE|PG
    (prepare_64), then jmpl to start64: at start64 the CPU is in 64-bit mode with LMA set by
    the processor (SDM Vol. 3A 10.8.5). The expectations are the source's, not kvmdbg's."""
    from kvmdbg.debug.engine.session import Session
    from kvmdbg.kvm import multiboot as mb
    path = kut_image("pku.flat")
    sym = elf32_symtab(path.read_bytes())
    s = Session.load(str(path), kvm=kvm)
    s.execute("break start64")
    assert "Breakpoint 1, " in s.execute("continue")
    cpu = s.vm.vcpus[0].cpu
    assert cpu.rip == sym["start64"]
    assert cpu.mode_name == "64-bit mode" and cpu.code_bits == 64
    assert cpu.cr0 & 0x80000001 == 0x80000001
    assert cpu.cr4 & 0x20 and cpu.cr3 == sym["ptl4"]
    assert cpu.efer & 0x500 == 0x500                    # LME and LMA
    assert cpu.gs_base == sym["stacktop"] - sym["per_cpu_size"]
    assert cpu.ss == cpu.ds == cpu.es == 0x10           # KERNEL_DS (setup_segments)
    assert s.vm.read_gpa(sym["mb_boot_info"], 4) == mb.MBI_ADDR.to_bytes(4, "little")


def test_shadow_paging_maps_a_nonpaging_guest_one_to_one():
    """Under shadow paging a guest with CR0.PG=0 runs on direct pages that map each
    linear address to the same guest-physical one (nonpaging_page_fault -> direct_map;
    mmu.c), with every right (ACC_ALL)."""
    from kvmdbg.debug.engine.session import Session
    s = Session.load(str(kut_image("pku.flat")), kvm="shadow")
    s.run(max_steps=3)                      # the entry's first stores and fetches fault in
    vcpu = s.vm.vcpus[0]
    root = vcpu.mmu.root.sp
    assert root.direct and vcpu.cpu.cr0 & 0x80000000 == 0
    entry = s.vm.vcpus[0].cpu.rip & ~0xFFF
    _sp, _i, spte = s.vm.shadow.leaf_spte(root, entry)
    assert spte & 1 and spte & 2 and spte & 4             # present, writable, user
    assert (spte & 0x000F_FFFF_FFFF_F000) == s.vm.gfn_to_page(entry >> 12)[1] << 12


def test_compat_mode_is_passed_through_on_the_way():
    """Between MOV CR0 (PG on: IA-32e mode, still the 32-bit CS) and the far jump, the CPU
    runs in compatibility mode; the stop line and info registers say so."""
    from kvmdbg.debug.engine.session import Session
    path = kut_image("pku.flat")
    s = Session.load(str(path))
    cpu = s.vm.vcpus[0].cpu
    assert cpu.mode_name == "32-bit protected mode"
    seen = set()
    while cpu.rip != elf32_symtab(path.read_bytes())["start64"]:
        s.execute("stepi")
        seen.add(cpu.mode_name)
    assert seen == {"32-bit protected mode", "compatibility mode", "64-bit mode"}


# --- small images built here (spec 3.1) ---

def mb_header(flags=0, checksum=None, kludge=()):
    cs = -(MB_MAGIC + flags) & 0xFFFFFFFF if checksum is None else checksum
    return struct.pack("<III", MB_MAGIC, flags, cs) + struct.pack(f"<{len(kludge)}I", *kludge)


def elf32(segments, entry, header=None):
    """A minimal ELF32 i386 executable: [(paddr, bytes, memsz)]; the multiboot header is
    the first segment's first bytes."""
    phoff, n = 52, len(segments)
    data_off = phoff + 32 * n
    body, phdrs = b"", b""
    for i, (pa, blob, memsz) in enumerate(segments):
        if i == 0 and header is not None:
            blob = header + blob
        off = data_off + len(body)
        phdrs += struct.pack("<8I", 1, off, pa, pa, len(blob), max(memsz, len(blob)), 5, 4)
        body += blob
    eh = (b"\x7fELF" + bytes([1, 1, 1]) + bytes(9) +
          struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, phoff, 0, 0, 52, 32, n, 40, 0, 0))
    return eh + phdrs + body


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_small_elf_image(tmp_path):
    code = b"\xf4" * 16
    path = write(tmp_path, "ok.elf", elf32([(0x200000, code, 0x2000)], 0x20000c, mb_header()))
    vm = make_vm(load_program(path), mem="8M")
    assert vm.peek_gpa(0x20000c, 16) == code
    assert vm.vcpus[0].cpu.rip == 0x20000c
    assert read_mbi(vm, vm.vcpus[0].cpu.r[RBX])["mem_upper"] == 7 * 1024


def test_aout_kludge_fields(tmp_path):
    # header_addr, load_addr, load_end_addr (0: whole file), bss_end_addr, entry_addr
    load = 0x300000
    hdr = mb_header(1 << 16, kludge=(load, load, 0, load + 0x1000, load + 32))
    body = hdr + b"\x90" * 4 + b"\xf4"
    path = write(tmp_path, "kludge.bin", body)
    vm = make_vm(load_program(path), mem="8M")
    assert vm.peek_gpa(load, len(body)) == body
    assert vm.vcpus[0].cpu.rip == load + 32
    assert vm.peek_gpa(load + len(body), 16) == bytes(16)


@pytest.mark.parametrize("case, words", [
    ("bad-checksum", "bad checksum"),
    ("outside-ram", "outside RAM"),
    ("truncated", "truncated file"),
    ("truncated-kludge", "truncated"),
    ("unknown-flag", "does not know"),
    ("elf64", "ELF32"),
])
def test_malformed_images_one_line(tmp_path, case, words):
    if case == "bad-checksum":
        data = elf32([(0x200000, b"\xf4", 16)], 0x200000, mb_header(checksum=1))
    elif case == "outside-ram":
        data = elf32([(0x7F0000, b"\xf4", 0x100000)], 0x7F000C, mb_header())
    elif case == "truncated":
        data = elf32([(0x200000, b"\xf4" * 64, 64)], 0x20000c, mb_header())[:-40]
    elif case == "truncated-kludge":
        data = mb_header(1 << 16)[:12] + b"\0" * 8
    elif case == "unknown-flag":
        data = elf32([(0x200000, b"\xf4", 16)], 0x200000, mb_header(flags=1 << 5))
    else:
        data = bytearray(elf32([(0x200000, b"\xf4", 16)], 0x200000, mb_header()))
        data[4] = 2                        # ELFCLASS64 (header no longer parses as ELF32)
        data = bytes(data)
    path = write(tmp_path, f"{case}.elf", data)
    with pytest.raises(ConfigError) as e:
        make_vm(load_program(path), mem="8M")
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_elf_without_multiboot_is_refused():
    with pytest.raises(ConfigError) as e:
        load_program("/bin/true")
    assert "without a multiboot header" in str(e.value)


def test_raw_machine_refuses_a_multiboot_image_and_pc_a_raw_binary(tmp_path):
    path = write(tmp_path, "ok.elf", elf32([(0x200000, b"\xf4", 16)], 0x20000c, mb_header()))
    with pytest.raises(ConfigError, match="needs the pc machine"):
        make_vm(load_program(path), machine="raw")
    raw = write(tmp_path, "raw.bin", b"\xf4")
    with pytest.raises(ConfigError, match="boots multiboot images"):
        make_vm(load_program(raw), machine="pc")
    with pytest.raises(ConfigError, match="unknown machine"):
        make_vm(load_program(raw), machine="isapc")


def test_raw_boot_contract_unchanged(tmp_path):
    raw = write(tmp_path, "raw.bin", b"\xf4")
    vm = make_vm(load_program(raw))
    assert vm.machine.name == "raw" and vm.mem_size == 16 << 20 and vm.devices == []
    c = vm.vcpus[0].cpu
    assert c.rip == 0x100000 and c.efer & EFER_LMA and c.cr3 == 0x1000
