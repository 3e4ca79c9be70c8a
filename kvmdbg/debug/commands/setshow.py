"""set and show: assignments (`set $rax = 1`, `set $cr4.smep = 0`, `set *(u64*)gpa:X = V`,
`set var`) and the session's settings (confirm, pagination, style, logging, ...).

`set` is a prefix command like gdb's: a first word naming a setting selects it, anything
else is an assignment expression. The KVM model adds `set kvm` / `set cost` with
reg.sub("set").add(...), and the matching `show` entries with reg.sub("show").add(...).
"""

from __future__ import annotations

from kvmdbg.debug.commands.registry import check_range, split_word, usage_error
from kvmdbg.debug.engine.evaluate import evaluate_node
from kvmdbg.debug.engine.expr import Assign, Symbol, parse
from kvmdbg.debug.engine.state import LogFile
from kvmdbg.debug.present.values import format_natural
from kvmdbg.errors import CommandError
from kvmdbg.version import __version__

ON = ("on", "1", "yes", "enable", "true")
OFF = ("off", "0", "no", "disable", "false")


def parse_bool(fn, text: str) -> bool:
    t = text.strip().lower()
    if t in ON or t == "":
        return True
    if t in OFF:
        return False
    raise usage_error(fn, f"\"on\" or \"off\" expected (got \"{text}\").")


def set_(s, arg: str) -> None:
    """set VARIABLE = EXPR | set SETTING VALUE

    Assign to a register ($rax, $eax, $rip, $cr4, $cr4.smep), memory (*(u64*)ADDR,
    *(u32*)gpa:ADDR) or a convenience variable ($foo). Control registers and EFER go
    through the vCPU's CR path, as a guest MOV would. Or change a setting: see `help set`
    subcommands (confirm, pagination, style, logging, height, width, var).
    """
    if not arg:
        raise usage_error(set_, "Argument required (expression to compute).")
    word, _, rest = split_word(arg)
    if word and word[0].isalpha():
        sub = s.commands.sub("set").find(word)
        if sub is not None and not rest.lstrip().startswith("="):
            sub.fn(s, rest.strip())
            return
    assign(s, set_, arg)


def assign(s, fn, text: str) -> None:
    node = parse(text)
    if not isinstance(node, Assign):
        if isinstance(node, Symbol):
            raise CommandError(f'Undefined set command: "{text.split()[0]}".  Try "help set".')
        raise usage_error(fn, "Expected an assignment (VARIABLE = EXPR).")
    evaluate_node(s, node)


def set_var(s, arg: str) -> None:
    """set variable VARIABLE = EXPR

    Assignment, spelled out (gdb's way to avoid clashes with setting names).
    """
    if not arg:
        raise usage_error(set_var, "Argument required (expression to compute).")
    assign(s, set_var, arg)


def set_confirm(s, arg: str) -> None:
    """set confirm on|off

    Ask before deleting all breakpoints or restarting the program (never in -batch).
    """
    s.state.settings.confirm = parse_bool(set_confirm, arg)


def set_pagination(s, arg: str) -> None:
    """set pagination on|off

    Page long output on a terminal (never in -batch or when output is not a terminal).
    """
    s.state.settings.pagination = parse_bool(set_pagination, arg)


def set_style(s, arg: str) -> None:
    """set style enabled on|off

    Colour on or off. It is on by default on a terminal unless NO_COLOR is set (or
    --color=never); `set style enabled on` turns it on even then. Colour needs a terminal,
    or --color=always; `show style` says what is in effect.
    """
    words = arg.split()
    if words[:1] == ["enabled"]:
        words = words[1:]
    s.state.settings.style = parse_bool(set_style, " ".join(words))
    if s.styler is not None:
        s.style_why = ""


MAX_LINES = 2**32 - 2            # gdb's uinteger settings: 0 (or "unlimited") to UINT_MAX - 1


def _set_number(fn, attr):
    def setter(s, arg: str) -> None:
        if not arg:
            raise usage_error(fn, 'Argument required (integer to set it to, or "unlimited").')
        if arg == "unlimited":
            n = 0
        else:
            try:
                n = int(arg, 0)
            except ValueError:          # gdb takes an expression: set height $rows - 2
                from kvmdbg.debug.engine.evaluate import evaluate
                n = evaluate(s, arg).as_int()
        check_range(attr, n, 0, MAX_LINES, ', or "unlimited"')
        setattr(s.state.settings, attr, n)
    return setter


def set_height(s, arg: str) -> None:
    """set height N

    Lines per page for the pager (0 or unlimited: the terminal's height)."""
    _set_number(set_height, "height")(s, arg)


def set_width(s, arg: str) -> None:
    """set width N

    Characters per line (0 or unlimited: the terminal's width)."""
    _set_number(set_width, "width")(s, arg)


def set_logging(s, arg: str) -> None:
    """set logging on|off|file FILE|overwrite on|off|redirect on|off

    Copy the output (plain text, colour codes stripped) and the commands typed to a
    file, default kvmdbg.txt. `redirect on` sends output only to the file.
    """
    st = s.state
    word, _, rest = split_word(arg)
    rest = rest.strip()
    if word == "enabled":
        word, rest = (rest or "on"), ""
    if word in ON and not rest:
        if st.log is not None:
            s.message(f"Currently logging to \"{st.log.path}\".  Turn the logging off and on to "
                      "make the new setting effective.")
            return
        try:
            st.log = LogFile(st.settings.logging_file, st.settings.logging_overwrite)
        except OSError as e:
            raise CommandError(f"{st.settings.logging_file}: {e.strerror}.") from None
        s.message(f"Copying output to {st.settings.logging_file}.")
        if st.settings.logging_redirect:
            s.message("Redirecting output to the log file.")
    elif word in OFF and not rest:
        if st.log is not None:
            path = st.log.path
            st.log.close()
            st.log = None
            s.message(f"Done logging to {path}.")
    elif word == "file" and rest:
        st.settings.logging_file = rest
    elif word == "overwrite":
        st.settings.logging_overwrite = parse_bool(set_logging, rest)
    elif word == "redirect":
        st.settings.logging_redirect = parse_bool(set_logging, rest)
    else:
        raise usage_error(set_logging, f"Bad argument \"{arg}\".")


# --- show ---

def show(s, arg: str) -> None:
    """show [SETTING]

    Show a setting, the version, the value history (show values) or the convenience
    variables (show convenience); all settings without an argument.
    """
    for name, cmd in sorted(s.commands.sub("show").commands.items()):
        if name in ("values", "convenience", "version"):
            continue
        cmd.fn(s, "")


def _onoff(v: bool) -> str:
    return "on" if v else "off"


def show_version(s, arg: str) -> None:
    """show version

    The kvmdbg version."""
    s.message(f"kvmdbg {__version__}")


def show_confirm(s, arg: str) -> None:
    """show confirm

    Whether dangerous operations ask first."""
    s.message(f"Whether to confirm potentially dangerous operations is {_onoff(s.state.settings.confirm)}.")


def show_pagination(s, arg: str) -> None:
    """show pagination

    Whether long output is paged on a terminal."""
    s.message(f"State of pagination is {_onoff(s.state.settings.pagination)}.")


def show_style(s, arg: str) -> None:
    """show style

    Whether colour is on, and if it is not in effect, why."""
    on = s.state.settings.style
    state = "enabled" if on else "disabled"
    if s.styler is None:
        why = s.style_why or "when the output is not a terminal"
        s.message(f"CLI output styling is {state}; colour is not used {why} "
                  "(--color=always forces it).")
    elif not on and s.style_why:
        s.message(f"CLI output styling is disabled: {s.style_why} "
                  "(\"set style enabled on\" turns it on).")
    else:
        s.message(f"CLI output styling is {state}.")


def show_height(s, arg: str) -> None:
    """show height

    Lines per page for the pager."""
    h = s.state.settings.height
    s.message(f"Number of lines kvmdbg thinks are in a page is {h or 'unlimited'}.")


def show_width(s, arg: str) -> None:
    """show width

    Characters per line."""
    w = s.state.settings.width
    s.message(f"Number of characters kvmdbg thinks are in a line is {w or 'unlimited'}.")


def show_logging(s, arg: str) -> None:
    """show logging

    Where the log goes and whether it is on."""
    st = s.state
    s.message(f"logging enabled:  {_onoff(st.log is not None)}")
    s.message(f"logging file:  {st.settings.logging_file}")
    s.message(f"logging overwrite:  {_onoff(st.settings.logging_overwrite)}")
    s.message(f"logging redirect:  {_onoff(st.settings.logging_redirect)}")


def show_values(s, arg: str) -> None:
    """show values

    The last ten values of the value history."""
    values = s.history.values
    for i in range(max(0, len(values) - 10), len(values)):
        s.message(f"${i + 1} = {format_natural(s, values[i])}")


def show_convenience(s, arg: str) -> None:
    """show convenience

    The convenience variables ($foo, $_exitcode, $_, $__, ...)."""
    if not s.convenience:
        s.message("No debugger convenience values now defined.")
        return
    for name, v in sorted(s.convenience.items()):
        s.message(f"${name} = {format_natural(s, v)}")


def register(reg) -> None:
    reg.add("set", set_, category="data", dispatch=False)
    sub = reg.sub("set")
    sub.add("variable", set_var, aliases=("var",), category="data")
    sub.add("confirm", set_confirm, category="support")
    sub.add("pagination", set_pagination, category="support")
    sub.add("style", set_style, category="support")
    sub.add("height", set_height, category="support")
    sub.add("width", set_width, category="support")
    sub.add("logging", set_logging, category="scripting")
    reg.add("show", show, category="support")
    sub = reg.sub("show")
    sub.add("version", show_version)
    sub.add("confirm", show_confirm)
    sub.add("pagination", show_pagination)
    sub.add("style", show_style)
    sub.add("height", show_height)
    sub.add("width", show_width)
    sub.add("logging", show_logging, category="scripting")
    sub.add("values", show_values, category="data")
    sub.add("convenience", show_convenience, aliases=("conv",), category="data")
