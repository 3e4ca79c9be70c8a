"""gdb's Remote Serial Protocol framing: `$data#cs` packets, acks, escapes, run-length
encoding and the 0x03 interrupt byte.

The parser is a byte-at-a-time state machine, so it gives the same answer however the
bytes are split across reads (a pipe or a socket may cut a packet anywhere). Nothing
here knows what a packet means; server.py does.
"""

from __future__ import annotations

import queue
import threading

INTERRUPT = 0x03
ESCAPE = 0x7D
MUST_ESCAPE = b"$#}*"
MAX_PACKET = 0x4000           # what qSupported's PacketSize advertises (bytes of data)
RETRIES = 5                   # retransmissions of one packet before giving up on the peer


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data as it travels in a packet: $ # } * become } followed by the byte ^ 0x20."""
    out = bytearray()
    for b in data:
        if b in MUST_ESCAPE:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The inverse of escape() (the X packet's binary payload)."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            b = next(it, None)
            if b is None:
                break
            out.append(b ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def expand_rle(data: bytes) -> bytes:
    """Run-length encoding: `X*N` stands for X repeated 1 + (N - 29) times more."""
    if b"*" not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == ord("*") and out and i + 1 < len(data):
            out += bytes((out[-1],)) * (data[i + 1] - 29)
            i += 2
            continue
        out.append(b)
        i += 1
    return bytes(out)


def frame(data: bytes) -> bytes:
    """One packet ready to send (data already escaped where it is binary)."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


class Parser:
    """Turns received bytes into events: ("packet", data), ("bad", reason) for a packet
    whose checksum or hex digits are wrong (to be NAKed), ("ack", b"+"/b"-") and
    ("interrupt", None). Bytes outside a packet that are none of those are ignored."""

    def __init__(self) -> None:
        self._state = "idle"
        self._body = bytearray()
        self._sum = b""

    def feed(self, chunk: bytes) -> list:
        events = []
        for b in chunk:
            if self._state == "idle":
                if b == ord("$"):
                    self._state, self._body = "body", bytearray()
                elif b in b"+-":
                    events.append(("ack", bytes((b,))))
                elif b == INTERRUPT:
                    events.append(("interrupt", None))
            elif self._state == "body":
                if b == ord("#"):
                    self._state, self._sum = "sum", b""
                elif b == ord("$"):            # a new packet started: the old one is lost
                    events.append(("bad", "packet restarted before its end"))
                    self._body = bytearray()
                elif len(self._body) > 2 * MAX_PACKET:
                    events.append(("bad", "packet too long"))
                    self._state = "idle"
                else:
                    self._body.append(b)
            else:
                self._sum += bytes((b,))
                if len(self._sum) == 2:
                    self._state = "idle"
                    events.append(self._finish())
        return events

    def _finish(self):
        body = bytes(self._body)
        try:
            want = int(self._sum, 16)
        except ValueError:
            return ("bad", f"checksum {self._sum!r} is not hex")
        if want != checksum(body):
            return ("bad", f"checksum {want:02x} != {checksum(body):02x}")
        return ("packet", expand_rle(body))


class Disconnected(Exception):
    """The peer went away (end of file, a reset, or too many NAKs)."""


class Connection:
    """Packets over a byte transport (transport.py): a reader thread parses what arrives,
    so a 0x03 or a hang-up during a long `continue` is seen while the VM runs (on_urgent
    is called from that thread with "interrupt", "eof" and "packet", in the order they
    arrive; it must only set flags)."""

    def __init__(self, transport, on_urgent=lambda kind: None) -> None:
        self.t = transport
        self.on_urgent = on_urgent
        self.events: queue.Queue = queue.Queue()
        self.closed = False
        self.ack = True                      # QStartNoAckMode turns acks off
        self.log = []                        # (direction, text) of the last packets, for tests
        self._reader = threading.Thread(target=self._read_loop, name="gdbstub-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        parser = Parser()
        while True:
            try:
                chunk = self.t.read()
            except OSError:
                chunk = b""
            if not chunk:
                self.events.put(("eof", None))
                self.on_urgent("eof")
                return
            for ev in parser.feed(chunk):
                if ev[0] in ("interrupt", "packet"):
                    self.on_urgent(ev[0])      # in stream order: a 0x03 after `c` is for it
                self.events.put(ev)

    def _write(self, data: bytes) -> None:
        if self.closed:
            raise Disconnected()
        try:
            self.t.write(data)
        except OSError:
            self.closed = True
            raise Disconnected() from None

    def receive(self, timeout=None):
        """The next ("packet", data) or ("interrupt", None); NAKs bad packets and acks good
        ones on the way. Raises Disconnected at end of input."""
        while True:
            try:
                kind, value = self.events.get(timeout=timeout)
            except queue.Empty:
                return None
            if kind == "eof":
                self.closed = True
                raise Disconnected()
            if kind == "bad":
                self._write(b"-")
                continue
            if kind == "packet":
                if self.ack:
                    self._write(b"+")
                self.log.append(("<", value))
                return kind, value
            if kind == "interrupt":
                return kind, value
            # a stray ack outside a send: nothing waits for it

    def send(self, data: bytes) -> None:
        """Send one packet; with acks on, wait for `+` and retransmit on `-`."""
        self.log.append((">", data))
        del self.log[:-50]
        packet = frame(data)
        for _ in range(RETRIES):
            self._write(packet)
            if not self.ack:
                return
            while True:
                kind, value = self.events.get()
                if kind == "eof":
                    self.closed = True
                    raise Disconnected()
                if kind == "ack":
                    break
                if kind == "bad":          # the peer's packet was garbled: it resends
                    self._write(b"-")
                    continue
                if kind == "interrupt":    # on_urgent has seen it already
                    continue
                self.events.put((kind, value))      # a packet before the ack: keep it
                kind, value = "ack", b"+"
                break
            if value == b"+":
                return
        self.closed = True
        raise Disconnected()

    def close(self) -> None:
        self.closed = True
        self.t.close()
