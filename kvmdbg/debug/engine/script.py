"""Command files and line-by-line input (gdb's `source` rules)."""

from __future__ import annotations


def source_file(session, path: str, verbose: bool = False) -> bool:
    """Run a command file; the first error stops it, reported as FILE:LINE. True if all ran.

    Lines inside a `define`/`commands`/`document` block are the block's, up to its `end`;
    a block still open at the end of the file is an error (its lines are dropped)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        session.error(f"{path}: {e.strerror}.")
        return False
    except UnicodeDecodeError:
        session.error(f"{path}: not a text file.")
        return False
    open_before = session.state.block
    session.state.sourcing += 1
    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if verbose and session.state.block is None:
                session.message(f"+{line.strip()}")
            if not session.run_command(line, where=f"{path}:{lineno}: Error in sourced command file:"):
                return False
    finally:
        session.state.sourcing -= 1
    if session.state.block is not None and session.state.block is not open_before:
        kind = session.state.block.kind
        session.state.block = None
        session.error(f"{path}:{len(lines)}: Error in sourced command file:")
        session.error(f"End of file inside a \"{kind}\" block (missing \"end\").")
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
