"""The shipped binaries are exactly what their assembly sources build to."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "programs").glob("*.S"))


def _builder():
    spec = importlib.util.spec_from_file_location("build_programs", ROOT / "tools" / "build_programs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_there_are_programs():
    assert any(s.stem == "smep_flip" for s in SOURCES)


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_binary_matches_source(source, tmp_path):
    assert shutil.which("as"), "GNU binutils (as, ld, objcopy, nm) are needed to build programs"
    code, syms, elf = _builder().build(source, tmp_path)
    assert source.with_suffix(".bin").read_bytes() == code, \
        f"{source.name} changed: run python tools/build_programs.py"
    assert source.with_suffix(".sym").read_text() == syms
    assert source.with_suffix(".elf").read_bytes() == elf, \
        f"{source.stem}.elf changed: run python tools/build_programs.py"


@pytest.mark.parametrize("source", SOURCES[:1], ids=[s.stem for s in SOURCES[:1]])
def test_build_is_reproducible(source, tmp_path):
    """Two builds give the same bytes, and no absolute build path is in the ELF."""
    assert shutil.which("as"), "GNU binutils (as, ld, objcopy, nm) are needed to build programs"
    first, second = _builder().build(source, tmp_path), _builder().build(source, tmp_path)
    assert first == second
    assert str(ROOT).encode() not in first[2]


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_elf_has_the_line_table(source):
    from elftools.elf.elffile import ELFFile
    with open(source.with_suffix(".elf"), "rb") as f:
        elf = ELFFile(f)
        assert elf.has_dwarf_info()
        cu = next(elf.get_dwarf_info().iter_CUs())
        top = cu.get_top_DIE()
        assert top.attributes["DW_AT_name"].value == source.name.encode()
        assert top.attributes["DW_AT_comp_dir"].value == b"programs"


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_source_header_names_its_parameter(source):
    head = source.read_text().split("\n\n")[0]
    assert head.startswith(f"# {source.stem}:")
    assert "--arg" in source.read_text()
