"""Every command has help with a usage line, and is in the README's command table."""

import re
from pathlib import Path

from kvmdbg.debug.commands import build_registry
from kvmdbg.debug.commands.registry import CLASSES

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands():
    from kvmdbg.gdbstub.commands import register as register_gdbserver
    reg = build_registry()
    register_gdbserver(reg)            # as the CLI does for every session
    return list(reg.walk())


def test_every_command_has_a_usage_line_naming_it_and_a_description():
    for name, cmd in _commands():
        doc = (cmd.fn.__doc__ or "").strip()
        assert doc, f"{name}: no docstring"
        usage = cmd.usage
        assert usage.split("/")[0].split()[0] == name.split()[-1] or \
            usage.startswith(name), f"{name}: usage line {usage!r} does not start with the name"
        assert len(doc.splitlines()) >= 3, f"{name}: no description after the usage line"
        assert cmd.category in CLASSES, f"{name}: unknown class {cmd.category}"


def test_every_command_is_in_the_readme_table():
    text = README.read_text()
    section = re.search(r"^## Commands\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md needs a '## Commands' section"
    table = section.group(1)
    missing = [name for name, cmd in _commands()
               if f"| `{cmd.usage.replace('|', chr(92) + '|')}`" not in table]
    assert not missing, ("not in README's command table (run python3 tools/command_table.py "
                         f"--write): {missing}")


def test_aliases_do_not_hide_each_other():
    reg = build_registry()
    seen = {}
    for name, cmd in reg.commands.items():
        for a in cmd.aliases:
            assert a not in reg.commands, f"alias {a} of {name} is also a command"
            assert a not in seen, f"alias {a} used by {name} and {seen[a]}"
            seen[a] = name
