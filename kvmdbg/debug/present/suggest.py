"""Completion as a pure function: suggest(session, line) -> candidates for the last word.

Used by the `complete` command (so completion is testable without a terminal) and by
the REPL's prompt_toolkit completer, which only maps Suggestions to Completions. Every
candidate has a one-line description (a command's usage line, a breakpoint's type and
location, a catch kind's summary...).

What is completed where:
  first word                     commands (with their usage)
  after info/set/show            their subcommands
  a word starting with $         registers, convenience variables, $cr4. / $_event. fields
  delete/disable/enable/...      breakpoint numbers
  catch/tcatch                   catch kinds, then the kind's argument
  source, set logging file       file paths
  break/x/print/... (addresses)  symbols and gva:/gpa:/hpa:
  help                           commands and classes
  set kvm / set profile / ...     the names in NAMED_ARGUMENTS (profiles, knobs, costs)
  any command with complete=fn   fn(session, previous_words, word) -> [(text, description)]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from kvmdbg.debug.engine import catchpoints
from kvmdbg.debug.commands.registry import CLASSES, split_word
from kvmdbg.errors import KvmdbgError


@dataclass(frozen=True)
class Suggestion:
    text: str          # replaces the last word
    meta: str = ""     # one-line description
    kind: str = ""     # command, subcommand, register, variable, field, breakpoint, kind, symbol, file


BREAKPOINT_ARGS = ("delete", "disable", "enable", "condition", "ignore", "commands",
                   "info breakpoints", "info watchpoints")
ADDRESS_ARGS = ("break", "tbreak", "until", "advance", "x", "xp", "print", "output", "display",
                "disassemble", "clear", "watch", "rwatch", "awatch", "info symbol", "translate",
                "set variable", "printf", "condition")
FILE_ARGS = ("source", "set logging file")
SPACES = (("gva:", "guest-virtual address (the default)"), ("gpa:", "guest-physical address"),
          ("hpa:", "host-physical address"))

_WORD = re.compile(r"[A-Za-z0-9_$.:/~+-]*$")


def last_word(line: str) -> str:
    """The word being completed: what follows the last blank, quote, comma or operator."""
    return _WORD.search(line).group(0) if line and not line[-1].isspace() else ""


def suggest(session, line: str) -> list[Suggestion]:
    word = last_word(line)
    head = line[:len(line) - len(word)]
    out = _candidates(session, head, word)
    seen = set()
    result = []
    for c in sorted(out, key=lambda c: c.text):
        if c.text.startswith(word) and c.text not in seen:
            seen.add(c.text)
            result.append(c)
    return result


def _candidates(s, head: str, word: str):
    reg = s.commands
    stripped = head.lstrip()
    if not stripped:
        return [Suggestion(n, c.usage, "command") for n, c in reg.commands.items()]
    first, _, rest = split_word(stripped)
    cmd = reg.find(first)
    if cmd is None:
        return []
    path = [cmd.name]
    words = rest.split()
    # Walk down prefix commands (info registers, set logging, show ...).
    while cmd.subcommands is not None and words:
        sub = cmd.subcommands.find(words[0])
        if sub is None or (not cmd.dispatch and words[0].startswith("$")):
            break
        cmd, words = sub, words[1:]
        path.append(cmd.name)
    full = " ".join(path)
    if word.startswith("$"):
        return _dollar(s, word)
    if cmd.subcommands is not None and not words and not word.startswith(("$", "*")):
        return [Suggestion(n, c.usage, "subcommand") for n, c in cmd.subcommands.commands.items()]
    if cmd.complete is not None:
        try:
            return [Suggestion(t, m, "argument") for t, m in cmd.complete(s, words, word)]
        except KvmdbgError:
            return []
    try:
        named = _named(s, full, words)
    except (KvmdbgError, AttributeError, ImportError):
        named = []
    if named is not None:
        return named
    if full == "help":
        return ([Suggestion(n, c.usage, "command") for n, c in reg.commands.items()] +
                [Suggestion(n, d, "class") for n, d in CLASSES.items()] +
                [Suggestion("all", "every command, by class", "class")])
    if full in ("catch", "tcatch"):
        if not words:
            return [Suggestion(k.name, k.summary, "kind") for k in catchpoints.KINDS.values()]
        kind = catchpoints.KINDS.get(words[0])
        if kind is not None and len(words) == 1:
            if kind.name == "vmexit":
                return [Suggestion(r, "exit reason", "argument") for r in catchpoints.EXIT_NUMBERS]
            return [Suggestion(a, kind.summary, "argument") for a in kind.args]
        return []
    if full in BREAKPOINT_ARGS:
        return [Suggestion(str(p.number), f"{p.type_name} {p.what(s)}".strip(), "breakpoint")
                for p in s.breakpoints]
    if full in ("undisplay",):
        return [Suggestion(str(d.number), d.expression, "display") for d in s.state.displays]
    if full == "vcpu":
        return [Suggestion(str(v.index), f"step {v.cpu.steps}", "vcpu") for v in s.vm.vcpus]
    if full in FILE_ARGS:
        return _files(word)
    if full in ADDRESS_ARGS or full.startswith("set"):
        return ([Suggestion(n, f"{a:#x}", "symbol") for n, a in s.symbols.by_name.items()] +
                [Suggestion(p, m, "space") for p, m in SPACES])
    return []


# --- names the KVM model provides: (command path, argument position) -> fn(session) ---

def _profiles(s):
    from kvmdbg.kvm.profiles import PROFILES
    return [(name, p.summary) for name, p in PROFILES.items()]


def _knobs(s):
    from kvmdbg.kvm.profiles import KNOB_HELP
    return [(name, KNOB_HELP.get(name, f"now {value}"))
            for name, value in s.vm.profile.knobs().items()]


def _knob_values(s, knob: str):
    from kvmdbg.kvm import profiles
    value = s.vm.profile.knobs().get(knob)
    if isinstance(value, bool):
        return [("on", ""), ("off", "")]
    return [(v, "") for v in getattr(profiles, "_CHOICES", {}).get(knob, ())]


def _costs(s):
    return [(name, f"{cycles} cycles") for name, cycles, _src in s.vm.costs.rows()]


def _knob_assignments(s):
    return [(f"{name}=", meta) for name, meta in _knobs(s)]


NAMED_ARGUMENTS = {
    ("set kvm", 0): _knobs,
    ("set profile", 0): _profiles,
    ("set cost", 0): _costs,
    ("set knobs", None): _knob_assignments,          # None: at any position
}


def _named(s, full: str, words: list):
    fn = NAMED_ARGUMENTS.get((full, len(words))) or NAMED_ARGUMENTS.get((full, None))
    if fn is not None:
        return [Suggestion(t, m, "argument") for t, m in fn(s)]
    if full == "set kvm" and len(words) == 1:
        return [Suggestion(t, m, "argument") for t, m in _knob_values(s, words[0])]
    return None


def _dollar(s, word: str):
    from kvmdbg.debug.engine.evaluate import REGISTER_ALIASES, REGISTER_FIELDS
    if "." in word:
        base, _, _ = word[1:].partition(".")
        base = REGISTER_ALIASES.get(base, base)
        if base in REGISTER_FIELDS:
            return [Suggestion(f"${base}.{f}", f"bit {shift}" if width == 1 else
                               f"bits {shift}-{shift + width - 1}", "field")
                    for f, (shift, width) in REGISTER_FIELDS[base].items()]
        if base == "_event" and s.last_event is not None:
            names = ["seq", "name", "vcpu", "step", *s.last_event.fields]
            return [Suggestion(f"$_event.{n}", "field of the last event", "field") for n in names]
        return []
    regs = s.vcpu().regs
    out = [Suggestion("$" + n, f"register ({regs[n]:#x})", "register") for n in regs.names()]
    out += [Suggestion("$" + a, f"register {r}", "register") for a, r in REGISTER_ALIASES.items()]
    out += [Suggestion("$" + n, "convenience variable", "variable") for n in s.convenience]
    out += [Suggestion("$_step", "instructions the vCPU has retired", "variable"),
            Suggestion("$_event", "the event of the last catchpoint stop", "variable"),
            Suggestion("$_vcpu", "the selected vCPU", "variable")]
    return out


def _files(word: str):
    directory, _, stem = word.rpartition("/")
    base = os.path.expanduser(directory or ".") if directory or not word.startswith("/") else "/"
    if word.startswith("/") and not directory:
        base = "/"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for n in names:
        if not n.startswith(stem) or (n.startswith(".") and not stem.startswith(".")):
            continue
        path = (directory + "/" if directory or word.startswith("/") else "") + n
        if os.path.isdir(os.path.join(base, n)):
            out.append(Suggestion(path + "/", "directory", "file"))
        else:
            out.append(Suggestion(path, "file", "file"))
    return out


def complete_lines(session, line: str) -> list[str]:
    """What `complete LINE` prints: each candidate as a whole command line (gdb)."""
    word = last_word(line)
    head = line[:len(line) - len(word)]
    return [head + c.text for c in suggest(session, line)]
