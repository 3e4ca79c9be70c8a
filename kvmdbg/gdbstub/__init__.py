"""A gdb remote stub: stock gdb (and pwndbg, gef, IDEs) attaches to a kvmdbg guest.

    kvmdbg --gdb stdio PROGRAM          gdb: target remote | kvmdbg --gdb stdio PROGRAM
    kvmdbg --gdb tcp::1234 PROGRAM      gdb: target remote :1234
    (kvmdbg) gdbserver tcp::1234        the REPL's VM; the prompt returns when gdb detaches

The stub serves in the foreground: while gdb is attached it drives the VM, and kvmdbg's
own commands are reached with gdb's `monitor`. Above debug/ in the layers: the engine
never imports it.
"""

from __future__ import annotations

import os
import sys
import threading

from kvmdbg.gdbstub import transport
from kvmdbg.gdbstub.server import GdbServer


def _stderr(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def stdio_fds() -> tuple:
    """Take stdin/stdout for the protocol and point fd 1 at stderr, so nothing else that
    prints (kvmdbg's messages, a stray print) can land in the middle of a packet."""
    sys.stdout.flush()
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    return rfd, wfd


def serve(session, device: str, note=_stderr, fds=None) -> str:
    """Serve one gdb on `device` (QEMU's -gdb syntax) until it detaches, kills the
    program or hangs up; returns which. ConfigError for a bad device or a bind failure."""
    spec = transport.parse_device(device)
    info = session.gdbstub = {"device": device, "state": "listening", "peer": "", "ended": ""}
    if spec[0] == "stdio":
        rfd, wfd = fds if fds is not None else (0, 1)
        return _serve(session, transport.StdioTransport(rfd, wfd), note, info, quiet=True)
    _, host, port, host_given = spec
    if host_given and not transport.is_loopback(host):
        note(f"warning: the gdb stub listens on {host}, not loopback: whoever connects "
             "controls the guest.")
    listener = transport.listen(host, port)
    try:
        port = listener.getsockname()[1]
        info["device"] = f"tcp:{host}:{port}"
        note(f"Waiting for gdb on tcp:{host}:{port} (gdb: target remote {host}:{port})")
        conn = transport.accept(listener)
        stop = threading.Event()
        refuser = threading.Thread(target=_refuse_others, args=(listener, stop, note),
                                   name="gdbstub-refuse", daemon=True)
        refuser.start()
        try:
            return _serve(session, conn, note, info)
        finally:
            stop.set()
            refuser.join()
    finally:
        listener.close()


ENDINGS = {"detach": "gdb detached; kvmdbg has the VM again.",
           "kill": "gdb killed the program; kvmdbg has the VM again (`run` restarts it).",
           "disconnect": "gdb went away; kvmdbg has the VM again."}


def _serve(session, t, note, info, quiet=False) -> str:
    """quiet: no closing line (stdio: gdb is the only reader and kvmdbg exits next)."""
    info.update(state="attached", peer=t.describe())
    server = GdbServer(session, t, note)
    try:
        how = server.serve()
    finally:
        server.conn.close()
    info.update(state="ended", ended=how)
    if not quiet:
        note(ENDINGS[how])
    return how


def _refuse_others(listener, stop, note) -> None:
    """While one gdb is attached, a second connection is closed at once (one driver)."""
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn = transport.accept(listener)
        except (TimeoutError, OSError):
            continue
        note(f"gdb stub: refused a second client ({conn.peer}): one is attached.")
        conn.close()


__all__ = ["serve", "stdio_fds", "GdbServer"]
