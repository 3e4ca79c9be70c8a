"""A Pygments lexer for the command language (input highlighting at the prompt).

    x/4gx gpa:0x7000        command word, /FMT, address space, number
    break flip if $rax == 3 command, symbol, keyword, register, operator, number
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String, Text,
                            Whitespace)


class KvmdbgLexer(RegexLexer):
    name = "kvmdbg"
    aliases = ["kvmdbg"]
    filenames = ["*.kvmdbg"]

    tokens = {
        "root": [
            (r"^\s*#.*$", Comment.Single),
            (r"^(\s*)(![^\n]*)$", bygroups(Whitespace, String.Backtick)),
            (r"^(\s*)([A-Za-z][\w-]*)", bygroups(Whitespace, Keyword), "args"),
            (r"\s+", Whitespace),
            (r".", Text),
        ],
        "args": [
            (r"\n", Whitespace, "#pop"),
            (r"/[0-9]*[a-z]+", Name.Decorator),
            (r"\b(if)\b", Keyword),
            (r"\b(gva|gpa|hpa):", Keyword.Namespace),
            (r"\$[A-Za-z_]\w*(\.\w+)?", Name.Variable),
            (r"\$\$?\d*", Name.Variable),
            (r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|\d[\d_]*", Number),
            (r'"(\\\\|\\"|[^"])*"?', String),
            (r"'(\\.|[^'])'", String.Char),
            (r"\((u|s)(8|16|32|64)\s*\*?\)", Keyword.Type),
            (r"==|!=|<=|>=|&&|\|\||<<|>>|[-+*/%&|^~!<>=]", Operator),
            (r"[(){},]", Punctuation),
            (r"[A-Za-z_][\w.]*", Name),
            (r"\s+", Whitespace),
            (r".", Text),
        ],
    }
