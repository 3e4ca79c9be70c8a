"""The REPL's `gdbserver` and `info gdbserver`, added to a session's registry by the CLI
(the engine's command families cannot import the stub, which sits above them)."""

from __future__ import annotations

from kvmdbg.errors import CommandError


def gdbserver(s, arg: str) -> None:
    """gdbserver tcp::PORT | tcp:HOST:PORT

    Serve gdb's remote protocol on this VM (QEMU's -gdb device syntax; PORT 0 picks a
    free one and says which). gdb drives the VM while attached and reaches kvmdbg's
    commands with `monitor`; this prompt returns when gdb detaches. Loopback only unless
    a HOST is named.
    """
    from kvmdbg.gdbstub import serve
    device = arg.strip()
    if not device:
        raise CommandError('Usage: gdbserver tcp::PORT (e.g. "gdbserver tcp::1234").')
    if device == "stdio":
        raise CommandError("gdbserver: stdio is the REPL's own input; use tcp::PORT here "
                           "(or `kvmdbg --gdb stdio PROGRAM` from gdb).")
    serve(s, device)


def info_gdbserver(s, arg: str) -> None:
    """info gdbserver

    Whether a gdb stub served this VM, where, and who drives now (the stub serves in
    the foreground: while gdb is attached, gdb drives; otherwise this prompt does).
    """
    info = getattr(s, "gdbstub", None)
    if info is None:
        s.message("No gdb stub has run in this session (start one with `gdbserver tcp::PORT`).")
        return
    if info["state"] == "attached":
        s.message(f"gdb stub on {info['device']}, attached ({info['peer']}): gdb drives the VM.")
    else:
        s.message(f"gdb stub on {info['device']}, ended ({info['ended']}): kvmdbg drives the VM.")


def register(reg) -> None:
    reg.add("gdbserver", gdbserver, category="running")
    reg.sub("info").add("gdbserver", info_gdbserver, category="status")
