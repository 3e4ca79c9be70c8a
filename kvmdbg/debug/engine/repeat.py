"""Lines typed at the prompt: an empty line repeats the last stepping or examining command.

gdb's rule: only commands marked repeatable (stepi, nexti, continue, x, disassemble, ...)
repeat, and `x`/`disassemble` continue where they stopped (they leave the line to
repeat in state.next_repeat). Never in scripts: source_file and the stdin reader skip
blank lines instead of calling this.
"""

from __future__ import annotations

from kvmdbg.errors import KvmdbgError


def run_typed_line(s, line: str) -> bool:
    st = s.state
    if not line.strip():
        if st.block is not None or not st.repeat_line:
            return True
        line = st.repeat_line
    st.next_repeat = None
    ok = s.run_command(line)
    st.repeat_line = ""
    if ok and st.block is None:
        try:
            cmd, _ = s.commands.resolve(line)
        except KvmdbgError:
            return ok
        if cmd.repeatable:
            st.repeat_line = st.next_repeat if st.next_repeat is not None else line.strip()
    return ok
