"""The stub at the packet level: framing, bad input, and what happens to the VM."""

from __future__ import annotations

import socket
import threading
import xml.etree.ElementTree as ET

import pytest

from kvmdbg.debug.engine.session import Session
from kvmdbg.gdbstub import protocol, serve, target_xml
from kvmdbg.gdbstub.server import GdbServer
from kvmdbg.gdbstub.transport import SocketTransport, parse_device
from kvmdbg.errors import ConfigError

LOOP = bytes.fromhex("ebfe")              # jmp $: runs until interrupted


class Client:
    """A minimal gdb: frames packets, acks replies, keeps O packets apart."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(20)
        self.buf = b""
        self.console: list[str] = []

    def _byte(self) -> bytes:
        while not self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self.buf += chunk
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self) -> bytes:
        return self._byte()

    def packet(self, ack: bytes = b"+") -> bytes:
        """The next packet's data (checksum verified); O packets collected, not returned."""
        while True:
            while self._byte() != b"$":
                pass
            body = b""
            while (b := self._byte()) != b"#":
                body += b
            cs = self._byte() + self._byte()
            assert int(cs, 16) == protocol.checksum(body)
            self.raw(ack)
            if ack == b"+" and body.startswith(b"O") and body != b"OK":
                self.console.append(bytes.fromhex(body[1:].decode()).decode())
                continue
            return body

    def ask(self, data: str | bytes) -> bytes:
        data = data.encode() if isinstance(data, str) else data
        self.raw(protocol.frame(data))
        assert self.ack() == b"+"
        return self.packet()


@pytest.fixture
def stub():
    yield from _stub(Session.load("programs/smep_flip.bin"))


@pytest.fixture
def looping():
    yield from _stub(Session.from_bytes(LOOP))


def _stub(session):
    ours, theirs = socket.socketpair()
    result = {}
    server = GdbServer(session, SocketTransport(theirs, "test"), note=lambda t: None)
    th = threading.Thread(target=lambda: result.setdefault("how", server.serve()), daemon=True)
    th.start()
    client = Client(ours)
    client.session, client.result, client.thread = session, result, th
    yield client
    ours.close()
    th.join(10)


def ended(client) -> str:
    client.thread.join(10)
    return client.result.get("how")


# --- framing ---

def test_frames_escapes_and_run_length():
    assert protocol.frame(b"OK") == b"$OK#9a"
    data = bytes(range(256))
    assert protocol.unescape(protocol.escape(data)) == data
    assert b"$" not in protocol.escape(b"$#*}")
    assert protocol.expand_rle(b"0* ") == b"0000"          # ' ' is 32: three more
    p = protocol.Parser()
    events = [e for b in b"+$g#67\x03$m0,1#ff" for e in p.feed(bytes((b,)))]    # byte by byte
    assert events[0] == ("ack", b"+")
    assert events[1] == ("packet", b"g")
    assert events[2] == ("interrupt", None)
    assert events[3][0] == "bad"


def test_bad_checksum_is_naked_and_the_retransmission_answered(stub):
    stub.raw(b"$g#00")
    assert stub.ack() == b"-"
    regs = stub.ask("g")
    assert len(regs) == 2 * sum(target_xml.sizes())


def test_stub_retransmits_a_reply_we_nak(stub):
    stub.raw(protocol.frame(b"qC"))
    assert stub.ack() == b"+"
    assert stub.packet(ack=b"-") == b"QC1"
    assert stub.packet() == b"QC1"


def test_malformed_and_unknown_packets(stub):
    stub.raw(b"$m100000#zz")                  # checksum not hex
    assert stub.ack() == b"-"
    assert stub.ask("m100000") == b"E01"       # no length
    assert stub.ask("Pzz=00") == b"E01"
    assert stub.ask("jUnknownThing") == b""
    assert stub.ask("qNoSuchQuery") == b""
    assert stub.ask("vMustReplyEmpty") == b""
    assert stub.ask("Z9,0,1") == b""
    assert stub.ask("?") == b"T05thread:1;"    # still serving, nothing moved
    assert stub.session.cpu.rip == 0x100000


def test_memory_reads_and_writes(stub):
    assert stub.ask("m100000,3") == b"4989d1"            # mov r9, rdx
    assert stub.ask("m7fffffff0000,8") == b"E14"         # not mapped by the guest
    assert stub.ask("mfffffe,4") == b"0000"              # partial: the next page is unmapped
    assert stub.ask("M200000,2:abcd") == b"OK"
    assert stub.session.read_memory(0x200000, 2) == b"\xab\xcd"
    assert stub.ask(b"X200000,1:" + protocol.escape(b"#")) == b"OK"
    assert stub.session.read_memory(0x200000, 1) == b"#"
    assert stub.ask("M7fffffff0000,1:00") == b"E14"


def test_physical_memory_mode(stub):
    assert stub.ask("qqemu.PhyMemMode") == b"0"
    assert stub.ask("Qqemu.PhyMemMode:1") == b"OK"
    assert stub.ask("m1000,8") == stub.session.read_memory(0x1000, 8, "gpa").hex().encode()
    assert stub.ask("Qqemu.PhyMemMode:2") == b"E01"


def test_target_description_matches_the_g_packet(stub):
    assert b"qXfer:features:read+" in stub.ask("qSupported:multiprocess+;swbreak+")
    doc = b""
    while True:
        chunk = stub.ask(f"qXfer:features:read:target.xml:{len(doc):x},200")
        doc += protocol.unescape(chunk[1:])
        if chunk[:1] == b"l":
            break
    root = ET.fromstring(doc)
    regs = root.findall(".//reg")
    assert [r.get("name") for r in regs][:17] == list(target_xml.REGISTERS[i].name for i in range(17))
    assert {"cr0", "cr3", "cr4", "efer", "fs_base", "k_gs_base", "st7", "xmm15"} <= {r.get("name") for r in regs}
    assert root.find("architecture").text == "i386:x86-64"
    assert stub.ask("qXfer:features:read:other.xml:0,100") == b"E00"


def test_registers_by_number(stub):
    cr4 = target_xml.BY_NAME["cr4"]
    assert stub.ask(f"p{cr4:x}") == (0x620).to_bytes(8, "little").hex().encode()
    assert stub.ask(f"P0={(5).to_bytes(8, 'little').hex()}") == b"OK"
    assert stub.session.vcpu(0).regs["rax"] == 5
    assert stub.ask("p999") == b"E22"
    cr0 = target_xml.BY_NAME["cr0"]
    assert stub.ask(f"P{cr0:x}={(0).to_bytes(8, 'little').hex()}") == b"E01"   # #GP in long mode
    assert stub.session.cpu.cr0 >> 31 == 1


def test_step_breakpoint_and_threads(stub):
    assert stub.ask("qfThreadInfo") == b"m1" and stub.ask("qsThreadInfo") == b"l"
    assert stub.ask("vCont?") == b"vCont;c;C;s;S"
    assert stub.ask("vCont;s:1;c") == b"T05thread:1;"
    assert stub.session.cpu.rip == 0x100003
    assert stub.ask("Z0,10000f,1") == b"OK"
    assert stub.ask("c") == b"T05thread:1;swbreak:;"
    assert stub.session.cpu.rip == 0x10000f
    assert stub.ask("z0,10000f,1") == b"OK"
    assert len(stub.session.breakpoints) == 0
    assert stub.ask("Z2,200000,8") == b"OK"
    assert stub.ask("c") == b"T05thread:1;watch:200000;"
    assert stub.ask("Z2,200001,8") == b"E22"             # unaligned: gdb splits such ranges


def test_monitor_streams_output_and_errors(stub):
    assert stub.ask("qRcmd," + "info registers rip".encode().hex()) == b"OK"
    assert stub.console[-1].startswith("rip")
    assert stub.ask("qRcmd," + "nonsense".encode().hex()) == b"OK"
    assert stub.console[-1] == 'Undefined command: "nonsense".  Try "help".\n'
    assert stub.ask("qRcmd," + "quit".encode().hex()) == b"OK"        # does not end kvmdbg
    assert stub.ask("qRcmd,zz") == b"E01"
    assert stub.ask("?") == b"T05thread:1;"


def test_interrupt_during_continue(looping):
    looping.raw(protocol.frame(b"c"))
    assert looping.ack() == b"+"
    looping.raw(b"\x03")
    assert looping.packet() == b"T02thread:1;"
    assert looping.session.cpu.steps > 0
    assert looping.ask("?") == b"T05thread:1;"


def test_disconnect_during_continue_leaves_the_vm_usable(looping):
    assert looping.ask("Z0,200000,1") == b"OK"            # never reached
    looping.raw(protocol.frame(b"c"))
    assert looping.ack() == b"+"
    looping.sock.close()
    assert ended(looping) == "disconnect"
    s = looping.session
    assert s.cpu.rip == 0x100000 and s.cpu.steps > 0
    assert "rip" in s.execute("info registers rip")
    assert s.step(3).reason == "step-limit"
    assert len(s.breakpoints) == 0                          # gdb's breakpoint went with it


def test_detach_and_kill_end_the_session(stub):
    assert stub.ask("D") == b"OK"
    assert ended(stub) == "detach"


def test_devices():
    assert parse_device("stdio") == ("stdio",)
    assert parse_device("tcp::1234") == ("tcp", "127.0.0.1", 1234, False)
    assert parse_device("tcp:0.0.0.0:99") == ("tcp", "0.0.0.0", 99, True)
    for bad in ("tcp:1234", "udp::1", "tcp::99999", ""):
        with pytest.raises(ConfigError):
            parse_device(bad)


def test_second_client_is_refused_while_one_is_attached():
    session = Session.load("programs/smep_flip.bin")
    notes = []
    port = {}

    def note(text):
        notes.append(text)
        if "Waiting" in text:
            port["n"] = int(text.split("tcp:127.0.0.1:")[1].split()[0])

    th = threading.Thread(target=lambda: serve(session, "tcp::0", note=note), daemon=True)
    th.start()
    for _ in range(200):
        if "n" in port:
            break
        threading.Event().wait(0.02)
    first = Client(socket.create_connection(("127.0.0.1", port["n"])))
    assert first.ask("?") == b"T05thread:1;"
    second = socket.create_connection(("127.0.0.1", port["n"]))
    second.settimeout(10)
    assert second.recv(10) == b""                  # closed at once
    second.close()
    assert first.ask("s") == b"T05thread:1;"       # the first one still drives
    assert first.ask("D") == b"OK"
    th.join(10)
    assert any("refused a second client" in n for n in notes)
    assert notes[-1] == "gdb detached; kvmdbg has the VM again."
    assert session.cpu.steps == 1


def test_a_host_that_is_not_loopback_is_warned_about():
    session = Session.load("programs/smep_flip.bin")
    notes = []
    th = threading.Thread(target=lambda: serve(session, "tcp:0.0.0.0:0", note=notes.append),
                          daemon=True)
    th.start()
    for _ in range(200):
        if any("Waiting" in n for n in notes):
            break
        threading.Event().wait(0.02)
    assert notes[0].startswith("warning: the gdb stub listens on 0.0.0.0, not loopback")
    port = int(notes[1].split("tcp:0.0.0.0:")[1].split()[0])
    client = Client(socket.create_connection(("127.0.0.1", port)))
    assert client.ask("D") == b"OK"
    th.join(10)
    assert session.gdbstub["ended"] == "detach"


READ_THEN_WRITE = bytes.fromhex("488b042500002000" "4889042500002000" "f4")


def test_hardware_breakpoint_and_read_access_watchpoints():
    gen = _stub(Session.from_bytes(READ_THEN_WRITE))
    c = next(gen)
    assert c.ask("Z1,100008,1") == b"OK"
    assert c.ask("c") == b"T05thread:1;hwbreak:;"
    assert c.ask("z1,100008,1") == b"OK"
    assert c.ask("Z4,200000,8") == b"OK"          # the write that follows is an access
    assert c.ask("c") == b"T05thread:1;awatch:200000;"
    assert c.ask("z4,200000,8") == b"OK"
    assert c.ask("c") == b"W00"                   # hlt: every vCPU halted, the guest ended
    gen.close()


def test_read_watchpoint():
    gen = _stub(Session.from_bytes(READ_THEN_WRITE))
    c = next(gen)
    assert c.ask("Z3,200000,4") == b"OK"
    assert c.ask("c") == b"T05thread:1;rwatch:200000;"
    assert c.session.cpu.rip == 0x100008          # after the reading instruction
    gen.close()


def test_a_triple_fault_is_sigsegv_with_kvmdbgs_line_first():
    gen = _stub(Session.from_bytes(bytes.fromhex("0f0b")))     # ud2 with no IDT
    c = next(gen)
    assert c.ask("c") == b"T0bthread:1;"
    assert c.console and c.console[0].startswith("Guest shut down (KVM_EXIT_SHUTDOWN) on vcpu 0")
    assert c.ask("g")                                        # still inspectable
    gen.close()
