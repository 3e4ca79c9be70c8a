"""The interactive prompt (prompt_toolkit): history, Ctrl-C clears the line, Ctrl-D quits."""

from __future__ import annotations

import os

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory

PROMPT = "(kvmdbg) "


def _history():
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    path = os.path.join(base, "kvmdbg", "history")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return FileHistory(path)
    except OSError:
        return InMemoryHistory()


def interact(session) -> int:
    from kvmdbg.debug.commands import QuitRequest
    prompt = PromptSession(history=_history())
    last = ""
    while True:
        try:
            line = prompt.prompt(PROMPT)
        except KeyboardInterrupt:
            continue
        except EOFError:
            session.message("quit")
            return 0
        if not line.strip():
            line = last
            if not line:
                continue
        else:
            word = line.split()[0]
            try:
                cmd = session.commands.lookup(word)
                last = line if cmd.repeatable else ""
            except Exception:
                last = ""
        try:
            session.run_command(line)
        except QuitRequest as q:
            return q.code
