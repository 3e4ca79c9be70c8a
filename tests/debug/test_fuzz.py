"""Random command lines never produce a traceback, and the session keeps answering."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmdbg import Session
from tests.debug.util import SMEP

WORDS = ["stepi", "si", "nexti", "x/4xg", "x/2i", "xp/8xb", "print", "p/x", "output", "display",
         "undisplay", "break", "tbreak", "watch", "rwatch", "awatch", "catch", "tcatch", "delete",
         "disable", "enable", "condition", "ignore", "info registers", "info breakpoints",
         "info cr", "info display", "info vcpus", "disassemble", "set", "set var", "echo",
         "printf", "help", "apropos", "complete", "translate", "bt", "vcpu", "until", "advance",
         "info", "info symbol", "show", "x", "u", "continue", "commands", "end", "define",
         "document", "undefined-thing", "info roots", "info spte", "info tlb", "info events",
         "info stats", "info mmu", "info kvm", "set kvm", "i r", "creg"]
TOKENS = ["$rax", "$eax", "$al", "$rip", "$pc", "$cr4", "$cr4.smep", "$cr0.wp", "$_event",
          "$_event.root", "$_step", "$", "$$", "$1", "$foo", "0", "1", "-1", "0x100000", "flip",
          "start", "*", "(", ")", "+", "-", "<<", "==", "&&", "!", "~", "/", "%", "=", ",",
          "gpa:", "gva:", "hpa:", "(u64*)", "(u8)", "{u32}", '"s"', "'c'", "if", "once", "count",
          "1-3", "root-zap", "marker", "vmexit", "cr-write", "cr4", "0x8000000000", "\\n", "%d",
          "/x", "/4gx", "99999999999999999999999", "$arg0", "#", '"%*d"', '"%s %c %q"', '"%"']

line = st.builds(
    lambda w, toks, junk: " ".join([w, *toks]) + junk,
    st.sampled_from(WORDS),
    st.lists(st.sampled_from(TOKENS), max_size=6),
    st.text(alphabet=string.printable, max_size=6),
)


def fresh_session() -> Session:
    """A newly booted session for each example (booting takes milliseconds): what one
    example's commands leave behind (breakpoints, displays, a half-open `define`, a moved
    guest) cannot change what the next one does, so every failure replays and shrinks on
    its own."""
    s = Session.load(SMEP, arg=3)
    s.max_continue_steps = 2_000            # `continue` and friends stay quick
    s.state.settings.confirm = False
    return s


# 300 examples of 1-4 lines, each with its own boot, take about 3 s on a quiet machine. No
# deadline: on the shared 2-core machine one example's time says nothing about kvmdbg.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, min_size=1, max_size=4))
def test_random_command_lines_never_raise_and_the_session_still_answers(lines):
    s = fresh_session()
    for text in lines:
        s.execute(text)
    s.state.block = None                    # a fuzzed `define`/`commands` may still be open
    out = s.execute("info registers rip")
    assert out.startswith("rip "), out
    assert not any("internal error" in e or "Traceback" in e for e in s.errors), s.errors[-3:]
