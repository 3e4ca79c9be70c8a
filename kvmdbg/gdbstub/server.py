"""gdb remote stub: packets become Session calls.

The Session stays the only thing that runs the VM: `c`, `s` and `vCont` go through the
same resume engine as the REPL's continue/stepi (debug/engine/stops.py), with gdb's Z
packets turned into kvmdbg breakpoints and watchpoints, so stop reasons, catchpoints and
the scheduler behave exactly as in the REPL. Threads are vCPUs: thread N is vCPU N-1.
`monitor CMD` runs a kvmdbg command and streams its output as O packets.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from kvmdbg.debug.engine import stops
from kvmdbg.debug.engine.evaluate import write_register
from kvmdbg.debug.present.report import report
from kvmdbg.errors import KvmdbgError
from kvmdbg.gdbstub import target_xml
from kvmdbg.gdbstub.protocol import MAX_PACKET, Connection, Disconnected, escape, unescape
from kvmdbg.stop_reason import (BREAKPOINT, CATCHPOINT, HALTED, INTERRUPTED, SHUTDOWN,
                                STEP_LIMIT, UNSUPPORTED, WATCHPOINT)

SIGINT, SIGILL, SIGTRAP, SIGSEGV = 2, 4, 5, 11
EFAULT = "E14"                 # memory that cannot be read or written (QEMU's answer)
EINVAL = "E22"
WATCH_KINDS = {2: "watch", 3: "rwatch", 4: "awatch"}     # Z type -> command and stop word
WATCH_TYPES = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}
SUPPORTED = (f"PacketSize={MAX_PACKET:x};qXfer:features:read+;qXfer:threads:read+;"
             "swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+;ReverseStep+;ReverseContinue+")


class Bad(Exception):
    """A packet we understood the start of but not its arguments: an error reply."""

    def __init__(self, reply: str = "E01"):
        super().__init__(reply)
        self.reply = reply


def _hex(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise Bad() from None


def _addr_len(text: str) -> tuple:
    a, sep, n = text.partition(",")
    if not sep:
        raise Bad()
    return _hex(a), _hex(n)


class GdbServer:
    """One attached gdb. serve() returns why it ended: detach, kill or disconnect."""

    def __init__(self, session, transport, note=None) -> None:
        self.s = session
        self.note = note or (lambda text: sys.stderr.write(text + "\n"))
        self.conn = Connection(transport, self._urgent)
        self.phys = False                  # Qqemu.PhyMemMode: m/M/X/Z2-4 on guest-physical
        self.g_vcpu = session.current      # Hg: the vCPU of register and memory packets
        self.points: dict = {}             # (Z type, addr, kind) -> kvmdbg stop point number
        self.o_ok = False                  # gdb is waiting (stop reply, qRcmd): O packets go
        self.running = False
        self.hung_up = False
        self.pending = False               # a 0x03 came after the last packet
        self._handlers = self._table()

    # --- urgent input (reader thread): set flags only ---

    def _urgent(self, kind: str) -> None:
        """From the reader thread. A 0x03 that arrives after the `c` it interrupts but
        before that `c` is handled stays pending until the run starts."""
        if kind == "packet":
            self.pending = False
            return
        if kind == "eof":
            self.hung_up = True
        else:
            self.pending = True
        if self.running:
            self.s.interrupt_requested = True

    # --- output of kvmdbg commands and the guest console ---

    def _emit(self, text: str) -> None:
        if self.o_ok and not self.conn.closed:
            try:
                self.conn.send(b"O" + (text + "\n").encode().hex().encode())
                return
            except Disconnected:
                pass
        self.note(text)

    @contextmanager
    def _output(self):
        with self.s.redirected(self._emit, self._emit):
            yield

    # --- the loop ---

    def serve(self) -> str:
        try:
            with self._output():
                return self._loop()
        finally:
            self._forget_points()

    def _forget_points(self) -> None:
        """gdb removes its breakpoints before it detaches; after a hang-up they would stay
        in kvmdbg's table, stopping the REPL at places no one asked it to."""
        for number in self.points.values():
            try:
                self.s.breakpoints.delete(number)
            except KvmdbgError:
                pass
        self.points.clear()

    def _loop(self) -> str:
        while True:
            try:
                got = self.conn.receive()
            except Disconnected:
                return "disconnect"
            kind, data = got
            if kind != "packet":
                continue               # 0x03 while stopped: nothing runs to interrupt
            try:
                reply = self.dispatch(data.decode("latin-1"), data)
            except Bad as e:
                reply = e.reply
            except Disconnected:
                return "disconnect"
            except KvmdbgError as e:
                self.note(f"gdbstub: {e}")
                reply = "E01"
            except Exception as e:     # a bug: one line, an error reply, the stub goes on
                self.note(f"gdbstub: internal error: {type(e).__name__}: {e}")
                reply = "E01"
            if isinstance(reply, tuple):           # (reply, then what)
                reply, end = reply
            else:
                end = None
            if reply is not None:
                try:
                    self.conn.send(reply if isinstance(reply, bytes) else reply.encode("latin-1"))
                except Disconnected:
                    return "disconnect"
            if end is not None:
                return end

    def dispatch(self, text: str, raw: bytes):
        """The reply to one packet (str or bytes; None for none; (reply, "detach"/"kill"))."""
        head = text[:1]
        if head == "q" or head == "Q":
            return self._query(text)
        if head == "v":
            return self._v(text)
        handler = self._handlers.get(head)
        if head == "X":
            return self._write_mem_binary(raw[1:])
        if handler is None:
            return ""                     # unknown packet: the empty reply
        return handler(text[1:])

    def _table(self) -> dict:
        """First character -> handler of the packet's arguments."""
        return {
            "?": lambda a: self.stop_reply(None),
            "g": lambda a: target_xml.all_bytes(self._regs()).hex(),
            "G": self._write_all,
            "p": self._read_reg,
            "P": self._write_reg,
            "m": self._read_mem,
            "M": self._write_mem_hex,
            "c": lambda a: self._resume(a, step=False),
            "s": lambda a: self._resume(a, step=True),
            "C": lambda a: self._resume(a.partition(";")[2], step=False),
            "S": lambda a: self._resume(a.partition(";")[2], step=True),
            "H": self._set_thread,
            "T": lambda a: "OK" if self._vcpu_of(a) is not None else "E02",
            "Z": lambda a: self._point(a, insert=True),
            "z": lambda a: self._point(a, insert=False),
            "b": self._reverse,
            "D": lambda a: ("OK", "detach"),
            "k": lambda a: (None, "kill"),
        }

    # --- queries ---

    def _query(self, text: str):
        name, _, arg = text.partition(":")
        if name == "qSupported":
            return SUPPORTED
        if name == "QStartNoAckMode":
            self.conn.send(b"OK")
            self.conn.ack = False
            return None
        if name == "qAttached":
            return "1"
        if name == "qC":
            return f"QC{self.s.current + 1:x}"
        if name == "qfThreadInfo":
            return "m" + ",".join(f"{i + 1:x}" for i in range(len(self.s.vm.vcpus)))
        if name == "qsThreadInfo":
            return "l"
        if name == "qXfer":
            return self._xfer(arg)
        if text.startswith("qRcmd,"):
            return self._monitor(text[len("qRcmd,"):])
        if name == "Qqemu.PhyMemMode":
            if arg not in ("0", "1"):
                raise Bad()
            self.phys = arg == "1"
            return "OK"
        if name == "qqemu.PhyMemMode":
            return "1" if self.phys else "0"
        if name == "qSymbol":
            return "OK"
        if name == "qThreadExtraInfo" or text.startswith("qThreadExtraInfo,"):
            v = self._vcpu_of(text.partition(",")[2])
            if v is None:
                raise Bad()
            return self._state(v).encode().hex()
        return ""

    def _xfer(self, arg: str):
        obj, _, rest = arg.partition(":")
        op, _, rest = rest.partition(":")
        annex, _, span = rest.partition(":")
        if op != "read":
            return ""
        if obj == "features":
            if annex != "target.xml":
                return "E00"
            doc = target_xml.target_xml()
        elif obj == "threads":
            doc = self._threads_xml()
        else:
            return ""
        off, n = _addr_len(span)
        data = doc.encode()[off:off + n]
        return (b"m" if off + n < len(doc.encode()) else b"l") + escape(data)

    def _threads_xml(self) -> str:
        rows = [f'<thread id="{v.index + 1:x}" core="{v.index}" name="vcpu{v.index}">'
                f"{self._state(v.index)}</thread>" for v in self.s.vm.vcpus]
        return '<?xml version="1.0"?>\n<threads>\n' + "\n".join(rows) + "\n</threads>\n"

    def _state(self, index: int) -> str:
        cpu = self.s.vm.vcpus[index].cpu
        what = "shut down" if cpu.shutdown else "halted" if cpu.halted else "runnable"
        return f"vCPU {index}, {what}, {cpu.mode_name}, step {cpu.steps}"

    def _monitor(self, hexcmd: str):
        try:
            line = bytes.fromhex(hexcmd).decode()
        except ValueError:
            raise Bad() from None
        self.o_ok = True
        try:
            self.s.run_command(line.strip())
            self.s.flush_output()
        except Exception as e:             # QuitRequest and friends: one line, no exit
            self._emit(f"{type(e).__name__}: {e}" if str(e) else "quit is not available from monitor")
        finally:
            self.o_ok = False
        self.g_vcpu = self.s.current
        return "OK"

    # --- threads ---

    def _vcpu_of(self, text: str):
        """gdb's thread id (hex; 0 any, -1 all) -> vCPU index, or None if there is none."""
        text = text.strip()
        if text in ("0", "-1", ""):
            return self.s.current
        try:
            t = int(text, 16)
        except ValueError:
            return None
        return t - 1 if 1 <= t <= len(self.s.vm.vcpus) else None

    def _set_thread(self, a: str):
        op, tid = a[:1], a[1:]
        v = self._vcpu_of(tid)
        if op not in ("g", "c") or v is None:
            return "E02"
        if op == "g":
            self.g_vcpu = v
            self.s.current = v
        return "OK"

    def _regs(self):
        return self.s.vcpu(self.g_vcpu).regs

    # --- registers ---

    def _read_reg(self, a: str):
        n = _hex(a)
        if not 0 <= n < len(target_xml.REGISTERS):
            return EINVAL
        return target_xml.read(self._regs(), n).hex()

    def _write_reg(self, a: str):
        n, sep, value = a.partition("=")
        n = _hex(n)
        if not sep or not 0 <= n < len(target_xml.REGISTERS):
            return EINVAL
        try:
            data = bytes.fromhex(value)
        except ValueError:
            raise Bad() from None
        self._set_reg(n, data)
        return "OK"

    def _set_reg(self, index: int, data: bytes) -> None:
        """As the REPL's `set $REG = V`: CRs and EFER through the vCPU's CR path. An
        unchanged value is not written, so a G packet does not send every control
        register through KVM again."""
        value = target_xml.decode(index, data)
        name = target_xml.REGISTERS[index].name
        if value is not None and self._regs()[name] != value:
            write_register(self.s, self.g_vcpu, name, value)

    def _write_all(self, a: str):
        try:
            data = bytes.fromhex(a)
        except ValueError:
            raise Bad() from None
        off = 0
        for i, size in enumerate(target_xml.sizes()):
            if off + size > len(data):
                break
            self._set_reg(i, data[off:off + size])
            off += size
        return "OK"

    # --- memory ---

    @property
    def _space(self) -> str:
        return "gpa" if self.phys else "gva"

    def _read_mem(self, a: str):
        addr, n = _addr_len(a)
        n = min(n, MAX_PACKET // 2)
        out = bytearray()
        with self._on_vcpu():
            while len(out) < n:               # page by page: a partial read is allowed
                chunk = min(n - len(out), 0x1000 - ((addr + len(out)) & 0xFFF))
                try:
                    out += self.s.read_memory((addr + len(out)) & ((1 << 64) - 1), chunk, self._space)
                except KvmdbgError:
                    break
        return out.hex() if out else EFAULT

    def _write(self, addr: int, data: bytes):
        try:
            with self._on_vcpu():
                self.s.write_memory(addr, data, self._space)
        except KvmdbgError:
            return EFAULT
        return "OK"

    def _write_mem_hex(self, a: str):
        head, sep, body = a.partition(":")
        addr, n = _addr_len(head)
        try:
            data = bytes.fromhex(body)
        except ValueError:
            raise Bad() from None
        if not sep or len(data) != n:
            raise Bad()
        return self._write(addr, data)

    def _write_mem_binary(self, raw: bytes):
        head, sep, body = raw.partition(b":")
        addr, n = _addr_len(head.decode("latin-1"))
        data = unescape(body)
        if not sep or len(data) != n:
            raise Bad()
        return self._write(addr, data) if n else "OK"

    @contextmanager
    def _on_vcpu(self):
        """Memory is read through the page tables of the vCPU gdb selected (Hg)."""
        saved, self.s.current = self.s.current, self.g_vcpu
        try:
            yield
        finally:
            self.s.current = saved

    # --- breakpoints and watchpoints ---

    def _point(self, a: str, insert: bool):
        parts = a.split(",")
        if len(parts) < 3:
            raise Bad()
        kind_z, addr, size = _hex(parts[0]), _hex(parts[1]), _hex(parts[2].split(";")[0])
        if kind_z > 4:
            return ""
        key = (kind_z, addr, size)
        table = self.s.breakpoints
        if not insert:
            number = self.points.pop(key, None)
            if number is not None:
                try:
                    table.delete(number)
                except KvmdbgError:
                    pass                      # deleted from the monitor meanwhile
            return "OK"
        if key in self.points:
            return "OK"
        if kind_z <= 1:
            self.points[key] = table.add_breakpoint(addr).number
            return "OK"
        if size not in WATCH_TYPES or addr % size:
            return EINVAL                 # gdb splits other ranges into aligned 1/2/4/8 pieces
        command = WATCH_KINDS[kind_z]
        where = f"gpa:{addr:#x}" if self.phys else f"{addr:#x}"
        before = table.last_created
        with self._on_vcpu(), self._quiet():
            ok = self.s.run_command(f"{command} *({WATCH_TYPES[size]}*){where}")
        if not ok or table.last_created == before:
            return EFAULT
        self.points[key] = table.last_created
        return "OK"

    @contextmanager
    def _quiet(self):
        with self.s.redirected(lambda text: None, self.note):
            yield

    def _owned(self) -> dict:
        return {number: key for key, number in self.points.items()}

    # --- running ---

    def _resume(self, a: str, step: bool):
        """c/s [ADDR]: a step is the Hg vCPU's alone, a continue runs them all."""
        if a:
            self._regs()["rip"] = _hex(a)
        return self._run(self.g_vcpu, 1) if step else self._run(None, None)

    def _v(self, text: str):
        if text == "vCont?":
            return "vCont;c;C;s;S"
        if text.startswith("vCont;"):
            return self._vcont(text[len("vCont;"):])
        if text.startswith("vKill"):
            return ("OK", "kill")
        return ""                            # vMustReplyEmpty and the rest

    def _vcont(self, actions: str):
        """All-stop, as the REPL: a step steps that vCPU alone (stepi), a continue with no
        step runs every vCPU (or the one named, when gdb locks the scheduler)."""
        step = cont = None
        for action in actions.split(";"):
            what, _, tid = action.partition(":")
            if not what or what[0] not in "cCsS":
                raise Bad()
            v = self._vcpu_of(tid) if tid else None
            if tid and v is None:
                return "E02"
            if what[0] in "sS" and step is None:
                step = self.g_vcpu if v is None else v
            elif what[0] in "cC" and cont is None:
                cont = "all" if v is None else v
        if step is not None:
            return self._run(step, 1)
        return self._run(None if cont == "all" else cont, None)

    def _run(self, scope, max_steps):
        s = self.s
        if scope is None and all(v.cpu.halted or v.cpu.shutdown for v in s.vm.vcpus):
            return self._exited()
        s.interrupt_requested = False
        self.running = True               # then the flags: see _urgent
        self.o_ok = True
        if self.pending or self.hung_up:
            s.interrupt_requested = True
        from kvmdbg.debug.engine import reverse
        was_replaying = reverse.replaying(s)
        try:
            outcome = stops.resume(s, scope=scope, max_steps=max_steps)
            if self.hung_up:
                raise Disconnected()
            if (was_replaying and max_steps is None and not outcome.hits
                    and not reverse.replaying(s) and outcome.stop.reason == STEP_LIMIT):
                # A continue in the past that ran into the end of the recorded future.
                self.g_vcpu = outcome.stop.vcpu
                return f"T{SIGTRAP:02x}thread:{outcome.stop.vcpu + 1:x};replaylog:end;"
            return self.stop_reply(outcome)
        finally:
            self.running = False
            self.o_ok = False
            s.interrupt_requested = False

    def _reverse(self, a: str):
        """bs / bc: gdb's reverse-stepi and reverse-continue (we advertise ReverseStep+ and
        ReverseContinue+), through kvmdbg's history (debug/engine/reverse.py), for the Hg
        vCPU. At the start of the history the stop reply says replaylog:begin, which gdb
        reports as "No more reverse-execution history."."""
        from kvmdbg.debug.engine import reverse
        if a not in ("s", "c"):
            return ""
        s = self.s
        s.current = self.g_vcpu
        if reverse.at_history_start(s):
            return f"T{SIGTRAP:02x}thread:{self.g_vcpu + 1:x};replaylog:begin;"
        self.running = True
        try:
            outcome = reverse.reverse_step(s, 1) if a == "s" else reverse.reverse_continue(s)
        finally:
            self.running = False
        if a == "c" and not outcome.hits and reverse.at_history_start(s):
            self.g_vcpu = outcome.stop.vcpu
            return f"T{SIGTRAP:02x}thread:{outcome.stop.vcpu + 1:x};replaylog:begin;"
        return self.stop_reply(outcome)

    def _exited(self) -> str:
        status = getattr(self.s.vm, "exit_status", None)
        return f"W{(status or 0) & 0xFF:02x}"

    def stop_reply(self, outcome) -> str:
        """T05 and its reasons, as gdb expects them; an O packet first with kvmdbg's own
        stop line when gdb could not explain the stop itself (a catchpoint, a kvmdbg
        breakpoint set from `monitor`, a halt or a fault)."""
        s = self.s
        if outcome is None:                    # `?`: where we are
            st = s.last_stop
            v = s.current if st is None else st.vcpu
            return f"T{SIGTRAP:02x}thread:{v + 1:x};"
        stop = outcome.stop
        owned = self._owned()
        foreign = any(h.point.number not in owned for h in outcome.hits)
        lines = []
        with s.redirected(lines.append, lines.append):
            try:
                report(s, outcome, context=False)
            except KvmdbgError as e:
                lines.append(str(e))
        if foreign or stop.reason in (CATCHPOINT, HALTED, SHUTDOWN, UNSUPPORTED):
            for line in lines:
                self._emit(line)
        self.g_vcpu = stop.vcpu
        thread = f"thread:{stop.vcpu + 1:x};"
        if stop.reason == HALTED and all(v.cpu.halted for v in s.vm.vcpus):
            return self._exited()
        if stop.reason == SHUTDOWN:
            return f"T{SIGSEGV:02x}{thread}"
        if stop.reason == UNSUPPORTED:
            return f"T{SIGILL:02x}{thread}"
        if stop.reason == INTERRUPTED:
            return f"T{SIGINT:02x}{thread}"
        why = ""
        for h in outcome.hits:
            key = owned.get(h.point.number)
            if key is None:
                continue
            if stop.reason == BREAKPOINT:
                why = "hwbreak:;" if key[0] == 1 else "swbreak:;"
            elif stop.reason == WATCHPOINT:
                why = f"{WATCH_KINDS[key[0]]}:{key[1]:x};"
            break
        return f"T{SIGTRAP:02x}{thread}{why}"
