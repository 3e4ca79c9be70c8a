"""A multiboot v1 loader (the Multiboot Specification 0.6.96): what QEMU's `-kernel` does for
a multiboot image, for the PC machine (kvm/machine.py).

The header is a 32-bit aligned magic 0x1BADB002 in the first 8 KiB with flags and a checksum
that makes magic + flags + checksum zero (spec 3.1.1). The image is an ELF32 loaded per its
program headers, or, with flag 16, per the header's a.out-kludge address fields (3.1.3).
The OS starts as spec 3.2 says: EAX = 0x2BADB002, EBX = the multiboot information
structure (3.3), 32-bit protected mode, flat 4 GiB segments, paging off, interrupts off.

ELF is read with pyelftools; nothing here reads DWARF (that is the debugger's business).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from kvmdbg.errors import ConfigError

MULTIBOOT_MAGIC = 0x1BADB002          # in the image's header
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002   # in EAX at entry
SEARCH_LIMIT = 8192
FLAG_PAGE_ALIGN, FLAG_MEMORY_INFO, FLAG_VIDEO, FLAG_AOUT_KLUDGE = 1, 2, 4, 1 << 16

# Where this loader puts the information structure, the command line and the memory map:
# conventional memory below the EBDA, which no multiboot image may be linked at (the spec
# asks images to load at 1 MiB or above).
MBI_ADDR = 0x9000
CMDLINE_ADDR = 0x9100
CMDLINE_MAX = 0x0E00                  # up to MMAP_ADDR
MMAP_ADDR = 0x9F00
LOWER_RAM_END = 0x9FC00               # 639 KiB: QEMU's e820 ends usable low RAM here

# multiboot_info.flags bits (spec 3.3)
MBI_MEM, MBI_CMDLINE, MBI_MODS, MBI_MMAP = 1 << 0, 1 << 2, 1 << 3, 1 << 6


@dataclass
class Segment:
    address: int          # physical (load) address
    data: bytes           # bytes from the file
    memsz: int            # bytes in memory (the rest zero-filled)


@dataclass
class MultibootImage:
    path: str
    header_offset: int
    flags: int
    entry: int
    segments: list[Segment]
    symbols: dict[str, int] = field(default_factory=dict)
    kind: str = "elf32"   # or "a.out kludge"


def find_header(data: bytes):
    """(offset, flags) of a valid header in the first 8 KiB, or None when there is no magic;
    ConfigError for a magic whose checksum is wrong."""
    limit = min(len(data), SEARCH_LIMIT)
    bad = None
    for off in range(0, limit - 11, 4):
        if int.from_bytes(data[off:off + 4], "little") != MULTIBOOT_MAGIC:
            continue
        flags, checksum = struct.unpack_from("<II", data, off + 4)
        if (MULTIBOOT_MAGIC + flags + checksum) & 0xFFFF_FFFF == 0:
            return off, flags
        bad = bad if bad is not None else (off, flags, checksum)
    if bad is not None:
        off, flags, checksum = bad
        want = -(MULTIBOOT_MAGIC + flags) & 0xFFFF_FFFF
        raise ConfigError(f"multiboot header at offset {off:#x}: bad checksum {checksum:#010x} "
                          f"(magic + flags + checksum must be 0; expected {want:#010x}).")
    return None


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def parse(path: str, data: bytes) -> MultibootImage | None:
    """The image described by a multiboot header, or None when the file has none."""
    found = find_header(data)
    if found is None:
        return None
    off, flags = found
    if flags & 0xFFF8:
        # bits 0-15 are ones the loader must understand; only 0-2 are defined (spec 3.1.2)
        raise ConfigError(f"{path}: multiboot header asks for features this loader does not "
                          f"know (flags {flags:#x}).")
    if flags & FLAG_AOUT_KLUDGE:
        return _parse_kludge(path, data, off, flags)
    if not is_elf(data):
        raise ConfigError(f"{path}: multiboot header without the address fields (flag 16) "
                          f"and the file is not an ELF.")
    return _parse_elf(path, data, off, flags)


def _parse_kludge(path, data, off, flags) -> MultibootImage:
    if len(data) < off + 32:
        raise ConfigError(f"{path}: truncated multiboot header (the a.out-kludge fields need "
                          f"32 bytes at offset {off:#x}).")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", data, off + 12)
    if load_addr > header_addr:
        raise ConfigError(f"{path}: multiboot load_addr {load_addr:#x} is above header_addr "
                          f"{header_addr:#x}.")
    start = off - (header_addr - load_addr)
    if start < 0:
        raise ConfigError(f"{path}: multiboot header_addr - load_addr ({header_addr - load_addr:#x}) "
                          f"reaches before the start of the file.")
    size = (load_end - load_addr) if load_end else len(data) - start
    if size < 0 or start + size > len(data):
        raise ConfigError(f"{path}: truncated file: multiboot load_end_addr {load_end:#x} needs "
                          f"{start + size} bytes, the file has {len(data)}.")
    memsz = max(size, bss_end - load_addr) if bss_end else size
    symbols = _elf_symbols(data) if is_elf(data) else {}
    return MultibootImage(path, off, flags, entry,
                          [Segment(load_addr, data[start:start + size], memsz)], symbols,
                          "a.out kludge")


def _elf(path, data):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        return ELFFile(io.BytesIO(data))
    except (ELFError, struct.error, ValueError) as e:
        raise ConfigError(f"{path}: malformed ELF: {e}.") from None


def _parse_elf(path, data, off, flags) -> MultibootImage:
    from elftools.common.exceptions import ELFError
    elf = _elf(path, data)
    if elf.elfclass != 32 or elf["e_machine"] != "EM_386":
        raise ConfigError(f"{path}: a multiboot ELF must be ELF32 for i386 (this one is "
                          f"ELF{elf.elfclass}, {elf['e_machine']}).")
    segments = []
    try:
        for ph in elf.iter_segments():
            if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
                continue
            o, n = ph["p_offset"], ph["p_filesz"]
            if o + n > len(data):
                raise ConfigError(f"{path}: truncated file: a program header wants bytes "
                                  f"{o:#x}-{o + n:#x}, the file has {len(data):#x}.")
            if ph["p_memsz"] < n:
                raise ConfigError(f"{path}: a program header has p_memsz {ph['p_memsz']:#x} "
                                  f"below p_filesz {n:#x}.")
            segments.append(Segment(ph["p_paddr"], data[o:o + n], ph["p_memsz"]))
    except (ELFError, struct.error) as e:
        raise ConfigError(f"{path}: malformed ELF program headers: {e}.") from None
    if not segments:
        raise ConfigError(f"{path}: the ELF has no loadable segment.")
    return MultibootImage(path, off, flags, elf["e_entry"], segments, _elf_symbols(data))


def _elf_symbols(data: bytes) -> dict[str, int]:
    """Name -> value of the image's own symbol table (functions, objects, labels)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.sections import SymbolTableSection
    try:
        from elftools.elf.elffile import ELFFile
        elf = ELFFile(io.BytesIO(data))
        syms: dict[str, int] = {}
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection) or sec["sh_type"] != "SHT_SYMTAB":
                continue
            for sym in sec.iter_symbols():
                kind = sym["st_info"]["type"]
                if not sym.name or kind in ("STT_FILE", "STT_SECTION") or \
                        sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
                    continue
                syms.setdefault(sym.name, sym["st_value"])
        return syms
    except (ELFError, struct.error, ValueError):
        return {}


def check_fits(image: MultibootImage, mem_size: int) -> None:
    for seg in image.segments:
        end = seg.address + seg.memsz
        if seg.address < 0x100000 and end > MBI_ADDR:
            raise ConfigError(f"{image.path}: a segment at {seg.address:#x}-{end:#x} overlaps "
                              f"low memory the loader uses (multiboot images load at 1 MiB "
                              f"or above).")
        if end > mem_size:
            raise ConfigError(f"{image.path}: a segment at {seg.address:#x}-{end:#x} is outside "
                              f"RAM ({mem_size >> 20} MiB; try a larger --mem).")
    if not any(s.address <= image.entry < s.address + s.memsz for s in image.segments):
        raise ConfigError(f"{image.path}: the entry point {image.entry:#x} is in no loaded "
                          f"segment.")


def memory_map(mem_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) as QEMU's e820 for a PC: low RAM, the EBDA, the BIOS area, RAM
    from 1 MiB (type 1 = available, 2 = reserved)."""
    return [(0, LOWER_RAM_END, 1), (LOWER_RAM_END, 0xA0000 - LOWER_RAM_END, 2),
            (0xF0000, 0x10000, 2), (0x100000, mem_size - 0x100000, 1)]


def info_structure(mem_size: int, cmdline: str) -> dict[int, bytes]:
    """{gpa: bytes} of the multiboot information (spec 3.3), its command line and map."""
    cmd = cmdline.encode() + b"\0"
    if len(cmd) > CMDLINE_MAX:
        raise ConfigError(f"--append: the command line is {len(cmd) - 1} bytes; at most "
                          f"{CMDLINE_MAX - 1} fit.")
    mmap = b"".join(struct.pack("<IQQI", 20, base, length, kind)
                    for base, length, kind in memory_map(mem_size))
    mem_upper = min(mem_size, 0xFFFF_FFFF) - 0x100000
    mbi = bytearray(116)
    struct.pack_into("<IIIIIII", mbi, 0, MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP,
                     LOWER_RAM_END // 1024, mem_upper // 1024, 0, CMDLINE_ADDR, 0, 0)
    struct.pack_into("<II", mbi, 44, len(mmap), MMAP_ADDR)
    return {MBI_ADDR: bytes(mbi), CMDLINE_ADDR: cmd, MMAP_ADDR: mmap}
