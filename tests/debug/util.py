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
    """(code, symbols) for Intel-syntax source with `label:` lines (';' separates lines).
    Label addresses are found by assembling each prefix, later labels given their
    previous guess with .equ, until the guesses stop moving."""
    items = []
    for ln in (x.strip() for x in re.split(r"[;\n]", source)):
        m = re.match(r"([A-Za-z_]\w*):\s*(.*)", ln)
        if m:
            items.append(("label", m.group(1)))
            ln = m.group(2)
        if ln:
            items.append(("insn", ln))
    labels = [t for k, t in items if k == "label"]
    guess = {name: address for name in labels}
    for _ in range(6):
        found, body = {}, []
        for kind, text in items:
            if kind == "label":
                later = [f".equ {n}, {guess[n]:#x}" for n in labels if n not in found]
                found[text] = address + len(asm("\n".join(later + body), address))
                body.append(text + ":")
            else:
                body.append(text)
        if found == guess:
            break
        guess = found
    return asm("\n".join(body), address), guess


def session(source: str, **kw) -> Session:
    code, symbols = assemble(source)
    return Session.from_bytes(code, symbols=symbols, **kw)


def run(s: Session, *commands: str) -> list[str]:
    """Every line the commands printed (output and errors, in order)."""
    out = []
    for c in commands:
        out.extend(s.execute(c).splitlines())
    return out
