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
    code, syms = _builder().build(source, tmp_path)
    assert source.with_suffix(".bin").read_bytes() == code, \
        f"{source.name} changed: run python tools/build_programs.py"
    assert source.with_suffix(".sym").read_text() == syms


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_source_header_names_its_parameter(source):
    head = source.read_text().split("\n\n")[0]
    assert head.startswith(f"# {source.stem}:")
    assert "--arg" in source.read_text()
