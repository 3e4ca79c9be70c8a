"""Sessions for command tests: the shipped program, or small assembled ones with labels."""

from __future__ import annotations

import re
from pathlib import Path

from kvmdbg import Session
from tests.helpers import asm

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")


def smep(**kw) -> Session:
    return Session.load(SMEP, **kw)


def assemble(source: str, address: int = 0x100000):
    """(code, symbols) for Intel-syntax source with `label:` lines. A label's address is
    the size of the code before it, so labels must not follow forward references."""
    lines = [ln.strip() for ln in re.split(r"[;\n]", source) if ln.strip()]
    symbols = {}
    body = []
    for ln in lines:
        m = re.match(r"([A-Za-z_]\w*):\s*(.*)", ln)
        if m:
            symbols[m.group(1)] = address + len(asm("\n".join(body), address)) if body else address
            body.append(m.group(1) + ":")
            ln = m.group(2)
        if ln:
            body.append(ln)
    return asm("\n".join(body), address), symbols


def session(source: str, **kw) -> Session:
    code, symbols = assemble(source)
    return Session.from_bytes(code, symbols=symbols, **kw)


def run(s: Session, *commands: str) -> list[str]:
    """Every line the commands printed (output and errors, in order)."""
    out = []
    for c in commands:
        out.extend(s.execute(c).splitlines())
    return out
