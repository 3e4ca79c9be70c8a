"""Imports point down only (design section 4), checked by parsing every module.

cli -> repl -> gdbstub -> debug -> kvm -> (cpu | mmu) -> mem -> events -> bits/errors/generation/stop_reason/collector; cpu and
mmu never import each other; capstone only in cpu/decoder.py; prompt_toolkit and
pygments only in repl/.
"""

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kvmdbg"

RANK = {"arch": 0.5, "bits": 0, "errors": 0, "version": 0, "generation": 0, "stop_reason": 0, "collector": 0, "events": 1, "mem": 2, "cpu": 3, "mmu": 3, "kvm": 4,
        "debug": 5, "gdbstub": 5.5, "repl": 6, "cli": 7, "__init__": 8, "__main__": 8}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_every_layer_is_known():
    for name, _ in _modules():
        assert _layer(name) in RANK, f"{name}: add its folder to the layer table"


def test_imports_point_down():
    problems = []
    for name, path in _modules():
        mine = _layer(name)
        for imp in _imports(path):
            if not imp.startswith("kvmdbg"):
                continue
            if imp == "kvmdbg":
                theirs = "__init__"
            else:
                theirs = _layer(imp)
            if theirs == mine:
                continue
            if {mine, theirs} == {"cpu", "mmu"}:
                problems.append(f"{name} imports {imp}: cpu and mmu never import each other")
            elif RANK[theirs] >= RANK[mine]:
                problems.append(f"{name} imports {imp}: {mine} may not import {theirs}")
    assert not problems, "\n".join(problems)


def test_third_party_ui_and_decoder_confined():
    problems = []
    for name, path in _modules():
        for imp in _imports(path):
            top = imp.split(".")[0]
            if top == "capstone" and name != "kvmdbg.cpu.decoder":
                problems.append(f"{name} imports capstone (only cpu/decoder.py may)")
            if top in ("prompt_toolkit", "pygments") and _layer(name) != "repl":
                problems.append(f"{name} imports {top} (only repl/ may)")
    assert not problems, "\n".join(problems)


def test_checker_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself must be able to fail."""
    bad = tmp_path / "kvmdbg" / "cpu"
    bad.mkdir(parents=True)
    (bad / "oops.py").write_text("from kvmdbg.debug.engine.session import Session\nimport capstone\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path / "kvmdbg")
    import pytest
    with pytest.raises(AssertionError, match="cpu may not import debug"):
        test_imports_point_down()
    with pytest.raises(AssertionError, match="only cpu/decoder.py"):
        test_third_party_ui_and_decoder_confined()


# Registers the CPU's mode (and so its fast paths) depends on: written only through the
# Cpu's setters, which drop what depends on them (kvmdbg/cpu/cpu.py lists every cache).
MODE_REGISTERS = {"cr0", "cr3", "cr4", "efer", "pkru", "pdptes", "cs", "hw_cr0_on"}
# The run loop's own flags: the debugger asks through Cpu.request_stop / withdraw_stop /
# set_single_step instead.
RUN_LOOP_FLAGS = {"single_step", "pending", "stop_reason"}


def _attribute_stores(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    yield node.lineno, sub.attr


def test_mode_registers_are_written_through_the_cpu_setters():
    problems = [f"{name}:{line} assigns .{attr}"
                for name, path in _modules() if name != "kvmdbg.cpu.cpu"
                for line, attr in _attribute_stores(path) if attr in MODE_REGISTERS]
    assert not problems, "\n".join(problems)


def test_the_debugger_does_not_touch_the_run_loop_flags():
    problems = []
    for name, path in _modules():
        if _layer(name) not in ("debug", "repl", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in RUN_LOOP_FLAGS:
                problems.append(f"{name}:{node.lineno} uses .{node.attr}")
    assert not problems, "\n".join(problems)


def test_store_finder_sees_plain_augmented_and_tuple_stores(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("cpu.cr0 = 1\ncpu.cr4 |= 2\na.x, cpu.cs = 1, 2\nprint(cpu.efer)\n")
    assert [attr for _, attr in _attribute_stores(f)] == ["cr0", "cr4", "x", "cs"]


# Architectural and kernel-ABI constants live in kvmdbg/arch (issue #11): the layers above
# import them and never define their own copies.
ARCH_CONSTANT = __import__("re").compile(
    r"^(CR0_|CR4_|EFER_|PFERR_|ACC_(EXEC|WRITE|USER|ALL)|KVM_REQ_|PT_|PT64_"
    r"|PAGE_(PRESENT|RW|USER|PWT|PCD|ACCESSED|DIRTY|PSE|GLOBAL|NX)"
    r"|EPT_(R|W|X|MT_|IPAT|ACCESSED|DIRTY|PAGE_SIZE))"
    r"|^(P|RW|US|PWT|PCD|A|D|PS|G|XD|NX)$")


def _module_level_definitions(path: Path):
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Name):
                    yield node.lineno, sub.id


def test_arch_constants_are_defined_only_in_arch():
    problems = [f"{name}:{line} defines {ident}"
                for name, path in _modules() if _layer(name) != "arch"
                for line, ident in _module_level_definitions(path)
                if ARCH_CONSTANT.search(ident)
                and not ident.endswith(("_BITS", "_VALID", "_BOOT", "_ROLE_BITS", "_ROLE_BITS_PRE_LAI"))]
    assert not problems, "\n".join(problems)


def test_arch_imports_only_bits():
    problems = [f"{name} imports {imp}" for name, path in _modules() if _layer(name) == "arch"
                for imp in _imports(path) if imp.startswith("kvmdbg") and imp != "kvmdbg.bits"]
    assert not problems, "\n".join(problems)


def test_arch_constant_pattern_covers_what_it_names():
    for ident in ("CR0_PG", "CR4_SMEP", "EFER_NXE", "PFERR_WRITE", "ACC_USER", "KVM_REQ_TLB_FLUSH",
                  "PAGE_PRESENT", "PT_WRITABLE", "EPT_X", "EPT_MT_WB", "P", "XD"):
        assert ARCH_CONSTANT.search(ident), ident
    for ident in ("PAGE_SIZE", "ACC_IMPLICIT", "EPT_QUAL_READ", "PFN_MASK", "PML4"):
        assert not ARCH_CONSTANT.search(ident), ident
