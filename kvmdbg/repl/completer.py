"""Tab completion at the prompt: prompt_toolkit Completions from the pure debug.suggest()."""

from __future__ import annotations

from prompt_toolkit.completion import Completer, Completion

from kvmdbg.debug.present.suggest import last_word, suggest


class KvmdbgCompleter(Completer):
    def __init__(self, session):
        self.session = session

    def get_completions(self, document, complete_event):
        line = document.text_before_cursor
        if "\n" in line:
            line = line.rsplit("\n", 1)[1]
        word = last_word(line)
        for s in suggest(self.session, line):
            yield Completion(s.text, start_position=-len(word), display_meta=s.meta)
