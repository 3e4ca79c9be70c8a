"""gdb as the oracle: run /usr/bin/gdb in batch mode, with no program or on a tiny static
one built here (GNU as and ld), and compare kvmdbg's answers with its own.

Tests that need gdb are skipped with a reason when it is not installed; they also state
gdb's answer in the test, so they still say what gdb does.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

from tests.helpers import run_cli

GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (the oracle)")
needs_gdb_program = pytest.mark.skipif(
    GDB is None or shutil.which("as") is None or shutil.which("ld") is None,
    reason="gdb and GNU binutils (as, ld) are needed to build the oracle's program")

SMEP = "programs/smep_flip.bin"

# A static program with a call, a rip-relative load and a data word: enough for $rsp,
# $pc, $_ after x, and disassembly of calls and rip-relative operands.
PROGRAM = """
.intel_syntax noprefix
.globl _start
_start:
  lea rax, [rip + msg]
  call flip
  mov rax, [rip + msg]
  mov eax, 60
  xor edi, edi
  syscall
flip:
  nop
  ret
.data
msg: .quad 0x1122334455667788
"""


def gdb(*commands: str, program: str | None = None, stdin: str | None = None) -> list[str]:
    """The lines gdb prints (stdout and stderr together, in order) for -batch -ex CMD..."""
    return gdb_text(*commands, program=program, stdin=stdin, stderr=True).splitlines()


def gdb_text(*commands: str, program: str | None = None, stdin: str | None = None,
             stderr: bool = False, options=()) -> str:
    """What gdb writes to stdout (and stderr, if asked) for -batch -ex CMD..., as it is."""
    args = [GDB, "-batch", "-nx", *options]
    for c in commands:
        args += ["-ex", c]
    if program:
        args.append(program)
    p = subprocess.run(args, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL,
                       input=stdin, text=True, timeout=120,
                       env=dict(os.environ, TERM="dumb", LC_ALL="C"))
    return p.stdout


# Nested calls, as CALLS below is for kvmdbg: start -> a -> b -> c.
NESTED = """
.intel_syntax noprefix
.globl _start
_start:
  call a
  mov ebx, 1
  mov eax, 60
  xor edi, edi
  syscall
a: push rbp
  call b
  pop rbp
  ret
b: nop
  call c
  ret
c: nop
  nop
  ret
"""


# f calls itself (rcx = 3 levels); `back: ret` returns to `back` in the caller.
RECURSIVE = """
.intel_syntax noprefix
.globl _start
_start:
  mov rcx, 3
  call f
  mov eax, 60
  xor edi, edi
  syscall
f: dec rcx
  jz leaf
again: call f
back: ret
leaf: ret
"""
RECURSIVE_KVMDBG = """start: mov rcx, 3; call f; hlt
f: dec rcx; jz leaf
again: call f
back: ret
leaf: ret"""


@functools.lru_cache(maxsize=None)
def gdb_program(tmpdir: str, source: str = PROGRAM, name: str = "t") -> str:
    src = os.path.join(tmpdir, f"{name}.S")
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(["as", src, "-o", src[:-2] + ".o"], check=True)
    subprocess.run(["ld", src[:-2] + ".o", "-o", src[:-2]], check=True)
    return src[:-2]


@pytest.fixture(scope="session")
def oracle_program(tmp_path_factory):
    return gdb_program(str(tmp_path_factory.mktemp("oracle")))


@pytest.fixture(scope="session")
def oracle_recursive(tmp_path_factory):
    return gdb_program(str(tmp_path_factory.mktemp("oracle")), RECURSIVE, "recursive")


@pytest.fixture(scope="session")
def oracle_nested(tmp_path_factory):
    return gdb_program(str(tmp_path_factory.mktemp("oracle")), NESTED, "nested")


def gdb_session(program: str, commands, timeout: int = 30) -> list:
    """What gdb prints for each command typed at its prompt (from_tty 1, as a person types):
    [(command, text before the next prompt)]. Answers y to a question."""
    import pexpect
    c = pexpect.spawn(GDB, ["-nx", "-q", program], encoding="utf-8", timeout=timeout,
                      env=dict(os.environ, TERM="dumb"))
    out = []
    try:
        c.expect(r"\(gdb\) ")
        for cmd in commands:
            c.sendline(cmd)
            text = ""
            while c.expect([r"\(gdb\) ", r"\(y or n\) "]) == 1:
                text += c.before + c.after
                c.sendline("y")
            text += c.before
            out.append((cmd, text.split("\r\n", 1)[1] if "\r\n" in text else ""))
    finally:
        c.close(force=True)
    return out


def kvmdbg(*commands: str, program: str = SMEP, options=(), stdin=None):
    """(status, stdout lines, stderr lines) of `kvmdbg -batch OPTIONS -ex CMD... PROGRAM`."""
    args = ["-batch", *options]
    for c in commands:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, program, stdin=stdin)
    return rc, out.splitlines(), err.splitlines()


def values(lines: list[str]) -> list[str]:
    """'$1 = 7' -> '7' for every value-history line."""
    return [ln.split(" = ", 1)[1] for ln in lines if ln.startswith("$") and " = " in ln]


CALLS = """start: call a; mov rbx, 1; hlt
a: push rbp; call b; pop rbp; ret
b: nop; call c; ret
c: nop; nop; ret"""


def raw_program(directory, source: str = CALLS, name: str = "calls") -> str:
    """NAME.bin and NAME.sym from Intel-syntax source with `label:`s (';' separates lines),
    as tools/build_programs.py would leave them; the path of the .bin."""
    import pathlib

    from tests.debug.util import assemble
    code, symbols = assemble(source)
    d = pathlib.Path(directory)
    (d / f"{name}.bin").write_bytes(code)
    (d / f"{name}.sym").write_text("".join(f"{a:016x} t {n}\n" for n, a in sorted(symbols.items())))
    return str(d / f"{name}.bin")
