"""Every registered command, bare and with a nonsense argument: at most one error line, and
never an internal error. A bad argument names the command's usage."""

import pytest

from kvmdbg.debug.commands import build_registry
from tests.debug.util import smep

NAMES = [name for name, _ in build_registry().walk() if name not in ("quit",)]
SESSION = smep(arg=2)
SESSION.state.settings.confirm = False


@pytest.mark.parametrize("name", NAMES)
def test_bare_and_nonsense_arguments(name):
    s = SESSION
    for line in (name, f"{name} @@@ (junk"):
        before = len(s.errors)
        s.execute(line)
        s.state.block = None
        new = s.errors[before:]
        assert not any("internal error" in e for e in new), (line, new)
        if name != "shell":
            assert len(new) <= 1, (line, new)
    assert s.execute("info registers rip").startswith("rip ")


@pytest.mark.parametrize("line, error", [
    ("creg x", 'Unexpected argument "x".  Usage: creg'),
    ("info cr x", 'Unexpected argument "x".  Usage: info cr'),
    ("info vcpus 1", 'Unexpected argument "1".  Usage: info vcpus'),
    ("step x", 'Invalid number "x".  Usage: step [N]'),
    ("undisplay x", "Bad display number 'x'.  Usage: undisplay [N|M-N]..."),
    ("run now", "run takes no arguments (use --arg on the command line).  Usage: run"),
    ("set confirm maybe", '"on" or "off" expected (got "maybe").  Usage: set confirm on|off'),
    ("backtrace x", 'Invalid number "x".  Usage: backtrace [full] [N]'),
])
def test_bad_arguments_name_the_usage(line, error):
    assert smep().execute(line) == error
