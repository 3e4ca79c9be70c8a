#!/usr/bin/env python3
"""Assemble programs/*.S into NAME.bin (raw, loaded at 0x100000), NAME.sym (nm format) and
NAME.elf (the linked ELF with its symbol table and DWARF line table, for source-level
debugging: `as -g`; the build directory is recorded as `programs`, so the DWARF holds no
absolute path and the build is byte-reproducible).

The .S sources are the truth; `python tools/build_programs.py` regenerates the
binaries and tests/test_programs.py checks the committed ones match. Needs GNU
binutils (as, ld, objcopy, nm).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

LOAD_ADDRESS = 0x100000
ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "programs"


def build(source: Path, outdir: Path) -> tuple[bytes, str, bytes]:
    """(binary, symbol text, ELF) for one source file."""
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "prog.o"
        elf = Path(tmp) / "prog.elf"
        binf = Path(tmp) / "prog.bin"
        # Assembled from the source's directory under its bare name: DW_AT_name is
        # "NAME.S" and DW_AT_comp_dir the directory, mapped to "programs".
        subprocess.run(["as", "--64", "-g", f"--debug-prefix-map={source.parent}=programs",
                        "-o", str(obj), source.name], check=True, cwd=source.parent)
        subprocess.run(["ld", "-N", "--no-warn-rwx-segments", "-e", "start",
                        f"-Ttext={LOAD_ADDRESS:#x}", "-o", str(elf), str(obj)], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(binf)], check=True)
        nm = subprocess.run(["nm", "-n", str(elf)], check=True, capture_output=True, text=True).stdout
        code = binf.read_bytes()
        elf_bytes = elf.read_bytes()
    syms = []
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT" and not parts[2].startswith("."):
            syms.append(f"{parts[0]} {parts[1]} {parts[2]}")
    return code, "\n".join(syms) + "\n", elf_bytes


def main() -> int:
    for src in sorted(PROGRAMS.glob("*.S")):
        code, syms, elf = build(src, PROGRAMS)
        src.with_suffix(".bin").write_bytes(code)
        src.with_suffix(".sym").write_text(syms)
        src.with_suffix(".elf").write_bytes(elf)
        print(f"{src.with_suffix('.bin').relative_to(ROOT)}: {len(code)} bytes, "
              f"{len(syms.splitlines())} symbols")
    return 0


if __name__ == "__main__":
    sys.exit(main())
