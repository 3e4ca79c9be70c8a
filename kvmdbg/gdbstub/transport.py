"""Byte transports for the stub: stdio (gdb's `target remote | kvmdbg --gdb stdio ...`)
and TCP (`--gdb tcp::PORT`, QEMU's device syntax). TCP binds loopback unless a host is
named; a host that is not loopback gets a warning, since the stub gives whoever
connects full control of the guest."""

from __future__ import annotations

import ipaddress
import os
import socket

from kvmdbg.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"


class StdioTransport:
    """stdin/stdout file descriptors: unbuffered, so a packet goes out whole at once."""

    def __init__(self, rfd: int = 0, wfd: int = 1) -> None:
        self.rfd, self.wfd = rfd, wfd

    def read(self) -> bytes:
        return os.read(self.rfd, 4096)

    def write(self, data: bytes) -> None:
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]

    def close(self) -> None:
        pass                       # the process's own stdio: closed when it exits

    def describe(self) -> str:
        return "stdio"


class SocketTransport:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer

    def read(self) -> bytes:
        return self.sock.recv(4096)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def describe(self) -> str:
        return f"tcp from {self.peer}"


def parse_device(spec: str) -> tuple:
    """QEMU's -gdb device: `stdio`, `tcp::PORT` or `tcp:HOST:PORT` -> ("stdio",) or
    ("tcp", host, port, host_given)."""
    spec = spec.strip()
    if spec == "stdio":
        return ("stdio",)
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if sep and port.isdigit() and int(port) < 65536:
            host = host.strip("[]")
            return ("tcp", host or DEFAULT_HOST, int(port), bool(host))
    raise ConfigError(f"bad gdb device '{spec}': use stdio, tcp::PORT or tcp:HOST:PORT "
                      "(PORT 0 picks a free one).")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (one client at a time); ConfigError on a bind failure."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}.") from None
    sock.listen(1)
    return sock


def accept(listener: socket.socket) -> SocketTransport:
    conn, addr = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return SocketTransport(conn, f"{addr[0]}:{addr[1]}")
