"""The command-language lexer, the colour styler, and the colour/NO_COLOR rules."""

import io

from pygments.token import Keyword, Name, Number, Operator

from kvmdbg.cli import use_color
from kvmdbg.debug.engine.state import strip_ansi
from kvmdbg.repl.lexer import KvmdbgLexer
from kvmdbg.repl.style import make_styler
from tests.debug.util import smep


def tokens(text):
    return [(t, v) for t, v in KvmdbgLexer().get_tokens(text) if v.strip()]


def test_lexer_knows_commands_formats_registers_spaces_numbers():
    toks = tokens("x/4gx gpa:0x7000")
    assert toks[:3] == [(Keyword, "x"), (Name.Decorator, "/4gx"), (Keyword.Namespace, "gpa:")]
    assert toks[3] == (Number, "0x7000")
    toks = tokens("break flip if $cr4.smep == 1")
    assert (Keyword, "if") in toks and (Name.Variable, "$cr4.smep") in toks
    assert (Operator, "==") in toks


def test_styler_colours_disassembly_and_honours_set_style():
    s = smep()
    styler = make_styler(s)
    line = "=> 0x100000 <start>:\ttest rdx, rdx"
    coloured = styler(line, "disasm")
    assert "\x1b[" in coloured and strip_ansi(coloured) == line
    s.execute("set style enabled off")
    assert styler(line, "disasm") == line


def test_colour_rules(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color("auto", Tty()) and not use_color("auto", io.StringIO())
    assert use_color("always", io.StringIO()) and not use_color("never", Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color("auto", Tty())
    assert use_color("always", Tty())                  # issue 13: an explicit flag wins (no-color.org)
    monkeypatch.setenv("NO_COLOR", "")                 # set but empty counts as unset
    assert use_color("always", io.StringIO())
