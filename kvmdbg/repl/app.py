"""The interactive prompt (prompt_toolkit).

One PromptSession for the whole run: persistent history ($XDG_STATE_HOME/kvmdbg/history,
or $KVMDBG_HISTFILE), Ctrl-R search, grey suggestions from history (Right arrow takes
them), Tab completion with a one-line description per candidate, the command line
highlighted by a Pygments lexer when colour is on. Ctrl-C at the prompt clears the
line; Ctrl-C while a command runs stops the guest between instructions (cli.py's
SIGINT handler sets session.interrupt_requested); Ctrl-D quits. An empty line repeats
the last stepping or examining command. `>` is the prompt inside commands/define blocks.
"""

from __future__ import annotations

import os

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.lexers import DynamicLexer, PygmentsLexer
from prompt_toolkit.output import ColorDepth

from kvmdbg.repl.completer import KvmdbgCompleter
from kvmdbg.repl.lexer import KvmdbgLexer

PROMPT = "(kvmdbg) "
BLOCK_PROMPT = ">"


def history_path() -> str:
    if os.environ.get("KVMDBG_HISTFILE"):
        return os.environ["KVMDBG_HISTFILE"]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kvmdbg", "history")


class _History(FileHistory):
    """FileHistory that does not keep a line equal to the one before it."""

    def append_string(self, string: str) -> None:
        if self._loaded_strings and self._loaded_strings[0] == string:
            return
        super().append_string(string)


def _history():
    path = history_path()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        open(path, "a").close()
        return _History(path)
    except OSError:
        return InMemoryHistory()


def _ask(question: str) -> bool:
    """gdb's y/n query at the terminal."""
    asker = PromptSession()
    lines = question.split("\n")
    for line in lines[:-1]:
        print(line)
    for _ in range(3):
        try:
            answer = asker.prompt(lines[-1]).strip().lower()
        except (KeyboardInterrupt, EOFError):
            return False
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        print("Please answer y or n.")
    return False


def interact(session, output=None, color: bool = False) -> int:
    """Read and run commands until quit or Ctrl-D; the exit status."""
    from kvmdbg.debug.commands import QuitRequest
    from kvmdbg.debug.engine.repeat import run_typed_line
    session.interactive = True
    lexer = PygmentsLexer(KvmdbgLexer)

    def styled() -> bool:               # colour possible (a terminal) and switched on
        return color and session.state.settings.style

    def ask(question: str) -> bool:
        if output is not None:
            output.stop_capture()       # what the command printed so far comes first
        return _ask(question)

    session.ask = ask
    prompt = PromptSession(
        history=_history(),
        auto_suggest=AutoSuggestFromHistory(),
        completer=KvmdbgCompleter(session),
        complete_while_typing=False,
        lexer=DynamicLexer(lambda: lexer if styled() else None),
        color_depth=ColorDepth.DEPTH_1_BIT,
    )
    terminal_depth = prompt.app.output.get_default_color_depth()
    if terminal_depth == ColorDepth.DEPTH_1_BIT and os.environ.get("NO_COLOR"):
        terminal_depth = ColorDepth.DEPTH_8_BIT     # prompt_toolkit's own NO_COLOR default
    while True:
        text = BLOCK_PROMPT if session.state.block is not None else PROMPT
        session.flush_output()          # gdb: `echo b` leaves the prompt after the b
        try:
            line = prompt.prompt(text, color_depth=terminal_depth if styled() else
                                 ColorDepth.DEPTH_1_BIT)
        except KeyboardInterrupt:
            continue                    # Ctrl-C at the prompt: the line is dropped
        except EOFError:
            session.message("quit")
            return 0
        try:
            _run_paged(session, output, line, run_typed_line)
        except QuitRequest as q:
            return q.code


def _run_paged(session, output, line, run) -> None:
    """Run a line; if it does not run the guest and prints more than a screen, page it."""
    paging = output is not None and session.state.settings.pagination and _pages(session, line)
    if not paging:
        run(session, line)
        return
    from kvmdbg.repl.pager import page
    output.capture = []
    try:
        run(session, line)
    finally:
        captured, output.capture = output.capture, None
    if captured is None:                # a question made it print as it went
        return
    settings = session.state.settings
    if not page(output.lines(captured), settings.height, settings.width):
        output.replay(captured)


def _pages(session, line: str) -> bool:
    if not line.strip():
        line = session.state.repeat_line
    if not line.strip():
        return False
    try:
        cmd, _ = session.commands.resolve(line)
    except Exception:
        return False
    # Commands that run other commands (source, user-defined ones) show their output as
    # it comes: a `shell sleep 4` in a sourced file must not hold back what came before.
    return not cmd.resumes and cmd.category != "user-defined" and \
        cmd.name not in ("shell", "define", "document", "commands", "source")
