"""Command files and line-by-line input (gdb's `source` rules)."""

from __future__ import annotations


def source_file(session, path: str) -> bool:
    """Run a command file; the first error stops it, reported as FILE:LINE. True if all ran."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        session.error(f"{path}: {e.strerror}.")
        return False
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not session.run_command(line, where=f"{path}:{lineno}: Error in sourced command file:"):
            return False
    return True


def read_lines(session, stream) -> int:
    """Commands from a non-terminal stdin, one per line, no prompt."""
    from kvmdbg.debug.commands import QuitRequest
    try:
        for line in stream:
            session.run_command(line.rstrip("\n"))
    except QuitRequest as q:
        return q.code
    return 0
