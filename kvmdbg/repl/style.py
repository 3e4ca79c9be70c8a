"""Colour: Pygments for disassembly and stop lines, one style for the prompt's input.

Used only when colour is on (a terminal, no NO_COLOR, or --color=always); the engine
never sees ANSI codes except through the styler it is given, and logs strip them.
"""

from __future__ import annotations

from pygments import highlight
from pygments.formatters import Terminal256Formatter
from pygments.lexers.asm import NasmLexer

STYLE_NAME = "native"           # readable on dark and light terminals alike
BOLD, RESET = "\x1b[1m", "\x1b[0m"
GREEN, BLUE = "\x1b[32m", "\x1b[34m"


def make_styler(session):
    """fn(text, style) -> text with ANSI colour, honouring `set style enabled off`."""
    formatter = Terminal256Formatter(style=STYLE_NAME)
    lexer = NasmLexer()

    def asm(text: str) -> str:
        return highlight(text, lexer, formatter).rstrip("\n")

    def styler(text: str, style: str) -> str:
        if not session.state.settings.style:
            return text
        if style == "disasm" and "\t" in text:
            head, _, insn = text.rpartition("\t")
            mark = ""
            if head.startswith("=> "):
                mark, head = f"{BOLD}{GREEN}=>{RESET} ", head[3:]
            return f"{mark}{BLUE}{head}{RESET}\t{asm(insn)}"
        if style == "stop":
            return f"{BOLD}{text}{RESET}"
        return text

    return styler

