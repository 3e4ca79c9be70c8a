"""Session: one debugged VM, the engine behind the REPL, batch mode and the Python API.

    from kvmdbg import Session
    s = Session.load("programs/smep_flip.bin")
    s.step(5); s.run(max_steps=10_000)
    s.vcpu(0).regs["rax"], s.read_memory(0x100000, 16)
    s.execute("info registers")        # the same commands as the REPL, text result
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from kvmdbg.bits import M64, PAGE_SHIFT
from kvmdbg.cpu.regs import SUBREGS
from kvmdbg.debug.engine import guest_walk, memory
from kvmdbg.debug.engine.symbols import Symbols
from kvmdbg.errors import CommandError, ConfigError, UnsupportedInstruction
from kvmdbg.kvm import boot as bootmod
from kvmdbg.kvm.scheduler import run_vm
from kvmdbg.kvm.vm import Vm
from kvmdbg.stop_reason import HALTED, SHUTDOWN, UNSUPPORTED



@dataclass
class Stop:
    """Why a run or step ended."""
    reason: str            # step-limit, halted, shutdown, breakpoint, unsupported, interrupted
    vcpu: int
    step: int
    rip: int
    message: str = ""


class Registers:
    """Dict-like view of one vCPU's registers by name (gprs, sub-registers, rip, eflags, crs)."""

    SPECIAL = ("rip", "eflags", "rflags", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "pkru",
               "fs_base", "gs_base", "k_gs_base", "pat", "tsc_aux", "cs", "ss", "ds", "es", "fs",
               "gs")
    ATTRS = {"k_gs_base": "kernel_gs_base"}     # gdb's name -> the Cpu attribute
    # registers the CPU's mode depends on: written through its setters
    MODE_SETTERS = {"cr0": "set_cr0", "cr3": "set_cr3", "cr4": "set_cr4", "efer": "set_efer",
                    "pkru": "set_pkru", "cs": "set_cs"}

    def __init__(self, cpu):
        self._cpu = cpu

    def names(self):
        return list(SUBREGS) + list(self.SPECIAL)

    def __contains__(self, name: str) -> bool:
        return name in SUBREGS or name in self.SPECIAL

    def __getitem__(self, name: str) -> int:
        c = self._cpu
        if name in SUBREGS:
            i, size, shift = SUBREGS[name]
            return (c.r[i] >> shift) & ((1 << (8 * size)) - 1)
        if name in ("eflags", "rflags"):
            return c.get_rflags()
        if name in self.SPECIAL:
            return getattr(c, self.ATTRS.get(name, name))
        raise KeyError(name)

    def __setitem__(self, name: str, value: int) -> None:
        """Raw register write (no KVM CR path; that is the `set $cr4.smep` command's job).
        The recorded future after this point is discarded (engine/record.py)."""
        self._set(name, value)
        rec = getattr(getattr(self._cpu.ops, "kvm", None), "recorder", None)
        if rec is not None:
            rec.changed()

    def _set(self, name: str, value: int) -> None:
        c = self._cpu
        if name in SUBREGS:
            i, size, shift = SUBREGS[name]
            m = ((1 << (8 * size)) - 1) << shift
            if size == 4:
                c.r[i] = value & 0xFFFF_FFFF
            else:
                c.r[i] = (c.r[i] & ~m & M64) | ((value << shift) & m)
        elif name in ("eflags", "rflags"):
            c.set_rflags(value & 0x3F7FD5)
        elif name in self.MODE_SETTERS:
            getattr(c, self.MODE_SETTERS[name])(value & M64)
        elif name in self.SPECIAL:
            setattr(c, self.ATTRS.get(name, name), value & M64)
        else:
            raise KeyError(name)


class VcpuView:
    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.cpu = vcpu.cpu
        self.regs = Registers(vcpu.cpu)

    @property
    def index(self) -> int:
        return self.vcpu.index


class Session:
    def __init__(self, vm: Vm, program: bootmod.Program, arg: int = 0, out=None, err=None):
        self.vm = vm
        self.program = program
        self.arg = arg
        self.symbols = Symbols(program.symbols)
        from kvmdbg.debug.engine.source import SourceFinder
        self.debug_info = None                # DebugInfo of the program's ELF (symbols, lines)
        self.sources = SourceFinder()         # the source path (`directory`, substitute-path)
        self.batch = False                    # -batch (the CLI sets it): fewer messages
        self.current = 0                      # the vCPU commands refer to
        self._out = out
        self._err = err
        self.out_raw = None                   # fn(text) that writes without a newline (the CLI)
        self.lines: list[str] = []            # captured output when no sink is given
        self.errors: list[str] = []
        self.last_stop: Stop | None = None
        self.max_continue_steps = 1 << 62
        self.interrupt_requested = False
        vm.console_sink = self._console
        # --- the debugger around the machine (breakpoints, values, output) ---
        from kvmdbg.debug.engine.breakpoints import BreakpointTable
        from kvmdbg.debug.engine.state import DebuggerState
        from kvmdbg.debug.present.values import ValueHistory
        self.boot_args: dict = {}             # how the VM was built, so `run` can rebuild it
        self.breakpoints = BreakpointTable(self)
        self.history = ValueHistory()         # $1, $2, ... of `print`
        self.convenience: dict = {}           # $foo (user), $_exitcode, $_, $__
        self.last_event = None                # the event of the last catchpoint stop ($_event)
        self.state = DebuggerState()          # displays, x defaults, settings, logging, ...
        self.context_providers: list = []     # fn(session, stop) -> lines shown after each stop
        self.restart_hooks: list = []         # fn(session) after `run`/`starti` rebuilt the VM
        self.styler = None                    # fn(text, style) -> text; set by the UI for colour
        self.style_why = ""                   # why colour is off or unused (for `show style`)
        self.interactive = False              # a person types the commands (REPL)
        self.ask = None                       # fn(question) -> bool; None: answer yes, say so
        self._depth = 0
        from kvmdbg.debug.commands import attach, build_registry
        self.commands = build_registry()
        attach(self)
        from kvmdbg.debug.present.report import snapshot_all
        snapshot_all(self)

    # --- construction ---

    @classmethod
    def load(cls, path: str, kvm: str | None = None, vcpus: int = 1, mem=None, arg: int = 0,
             out=None, err=None, knobs=(), machine: str | None = None, append: str = "",
             cpu: str | None = None) -> "Session":
        """mem None: the machine's default (16M raw, 128M pc). A multiboot image boots on
        the pc machine (kvm/machine.py) with `append` as its command line's arguments."""
        program = bootmod.load_program(path)
        session = cls._boot(program, vcpus, mem, arg, out, err, kvm, knobs,
                            machine=machine, append=append, cpu=cpu)
        from pathlib import Path
        elf = Path(path).with_suffix(".elf")
        if elf.is_file() and Path(path).suffix != ".elf":
            try:
                session.load_symbol_file(str(elf))
            except CommandError as e:       # a broken ELF beside: the .sym's symbols stay
                session.error(f"warning: {e}")
        return session

    def load_symbol_file(self, path: str, announce: bool = False) -> None:
        """Symbols and the DWARF line table of an ELF replace the program's (gdb's
        symbol-file). announce: say "Reading symbols from FILE..." (not in -batch)."""
        from kvmdbg.debug.engine.source import read_elf
        di = read_elf(path)
        if announce and not self.batch:
            self.message(f"Reading symbols from {path}...")
        self.debug_info = di
        self.symbols = Symbols(di.symbols)
        if not di.has_lines and not self.batch:
            self.message(f"(No debugging symbols found in {path})")

    def unload_symbols(self) -> None:
        self.debug_info = None
        self.symbols = Symbols({})

    @classmethod
    def from_bytes(cls, code: bytes, address: int = bootmod.LOAD_ADDRESS, vcpus: int = 1,
                   mem="16M", arg: int = 0, symbols=None, out=None, err=None,
                   kvm: str | None = None) -> "Session":
        """Boot per the contract, with `code` at `address` and every RIP pointing there."""
        if not code:
            raise ConfigError("the program is empty.")
        program = bootmod.Program(bytes(code), address, dict(symbols or {}), "<bytes>")
        return cls._boot(program, vcpus, mem, arg, out, err, kvm)

    @classmethod
    def _boot(cls, program, vcpus, mem, arg, out, err, kvm=None, knobs=(), **machine):
        args = dict(vcpus=vcpus, mem=mem, arg=arg, kvm=kvm, knobs=tuple(knobs),
                    **{k: v for k, v in machine.items() if v})
        session = cls(cls._new_vm(program, **args), program, arg, out, err)
        session.boot_args = args
        return session

    @staticmethod
    def _new_vm(program, vcpus, mem, arg, kvm=None, knobs=(), machine=None, append="",
                cpu=None) -> Vm:
        return bootmod.make_vm(program, kvm, knobs, vcpus, mem, arg, machine=machine,
                               append=append, cpu=cpu)

    def restart(self) -> None:
        """Rebuild the VM in its boot state from the same program and options (gdb's `run`).
        Breakpoints, displays, value history and settings are kept."""
        args = self.boot_args or dict(vcpus=len(self.vm.vcpus), mem=self.vm.mem_size, arg=self.arg)
        self.vm = self._new_vm(self.program, **args)
        self.vm.console_sink = self._console
        self.current = 0
        self.last_stop = None
        self.last_event = None
        self.breakpoints.sync_listener()
        from kvmdbg.debug.present.report import snapshot_all
        snapshot_all(self)
        for hook in self.restart_hooks:
            hook(self)

    # --- output ---

    @contextmanager
    def redirected(self, out, err):
        """Send output and errors to other sinks for a while (the gdb stub streams them to
        gdb as O packets; then they go back where they went)."""
        saved = self._out, self._err, self.out_raw
        self._out, self._err, self.out_raw = out, err, None    # unended text: a line too
        try:
            yield
        finally:
            self._out, self._err, self.out_raw = saved

    def message(self, text: str, style: str | None = None) -> None:
        """One line of output. style ('disasm', ...) lets a UI colour it; logs stay plain.
        Text that echo/printf left without a newline starts the line, as on gdb's stream."""
        if self.state.partial:
            head, self.state.partial = self.state.partial, ""
            if style is not None and self.styler is not None:
                text = self.styler(text, style)
                style = None
            text = head + text
        log = self.state.log
        if log is not None:
            log.write(text)
            if self.state.settings.logging_redirect:
                return
        if style is not None and self.styler is not None:
            text = self.styler(text, style)
        if self._out is not None:
            self._out(text)
        else:
            self.lines.append(text)

    def write(self, text: str) -> None:
        """Output without an implied newline (echo, printf), as gdb's stream has it: whole
        lines go out as they complete; the rest waits for the next output (`echo b` then
        `echo c\\n` print "bc"). Before an error, a prompt or the end of the session it
        goes out as it is (flush_output); with no sink that takes text without a newline
        (the Python API's captured lines), at the end of the top-level command."""
        text = self.state.partial + text
        *done, keep = text.split("\n")
        self.state.partial = ""
        for line in done:
            self.message(line)
        self.state.partial = keep

    def flush_output(self) -> None:
        """Send text still waiting for its newline to the output as it is."""
        text, self.state.partial = self.state.partial, ""
        if not text:
            return
        if self.out_raw is None:
            self.message(text)
            return
        log = self.state.log
        if log is not None:
            log.write(text, end="")
            if self.state.settings.logging_redirect:
                return
        self.out_raw(text)

    def _flush_partial(self) -> None:
        if self.out_raw is None:
            self.flush_output()

    def error(self, text: str) -> None:
        if self._err is not None:
            self.flush_output()
        else:
            self._flush_partial()
        self.errors.append(text)
        if self._err is not None:
            if self.state.log is not None:
                self.state.log.write(text)
            self._err(text)
        else:
            self.message(text)

    def _console(self, ch: str) -> None:
        self.console_pending = getattr(self, "console_pending", "") + ch
        if ch == "\n":
            self.flush_console()

    def flush_console(self) -> None:
        text = getattr(self, "console_pending", "")
        if text:
            self.console_pending = ""
            self.message(text.rstrip("\n"))

    # --- state access ---

    def vcpu(self, index: int | None = None) -> VcpuView:
        i = self.current if index is None else index
        if not 0 <= i < len(self.vm.vcpus):
            raise CommandError(f"Invalid vCPU {i}: this VM has {len(self.vm.vcpus)}.")
        return VcpuView(self.vm.vcpus[i])

    @property
    def cpu(self):
        return self.vm.vcpus[self.current].cpu

    def read_memory(self, addr: int, n: int, space: str = "gva") -> bytes:
        """Read guest memory without side effects (no A/D bits, TLB fills or exits)."""
        if space == "gpa":
            return guest_walk.read_gpa(self.vm, addr, n)
        if space == "hpa":
            return memory.read_hpa(self.vm, addr, n)
        if space != "gva":
            raise CommandError(f"unknown address space '{space}'")
        return guest_walk.read_gva(self.vm, self.cpu, addr, n)

    def write_memory(self, addr: int, data: bytes, space: str = "gva") -> None:
        self._write_memory(addr, data, space)
        from kvmdbg.debug.engine import reverse
        reverse.note_change(self)               # the recorded future no longer follows

    def _write_memory(self, addr: int, data: bytes, space: str = "gva") -> None:
        if space == "hpa":
            return memory.write_hpa(self.vm, addr, bytes(data))
        if space == "gpa":
            try:
                self.vm.write_gpa(addr, data)
            except ValueError as e:
                raise CommandError(str(e)) from None
            return
        guest_walk.write_gva(self.vm, self.cpu, addr, bytes(data))

    def shadowed_page_tables(self, addr: int, n: int, space: str = "gva") -> list[int]:
        """The gfns that n bytes at addr (gva, gpa or hpa) land in and that KVM shadows as
        guest page tables: a valid shadow page with guest PTEs exists for the gfn (an
        upper-level table, write-tracked, or a last-level one, write-protected or unsync).
        Only under shadow paging; looked up without side effects. A write from here is a
        write through the VMM's own mapping, which KVM never sees: the SPTEs built from
        the old gPTEs stay until the page is resynced or zapped (kvm_mmu_pte_write, now
        kvm_mmu_track_write, runs only for the writes KVM itself emulates)."""
        shadow = getattr(self.vm, "shadow", None)
        if shadow is None or not shadow.hash:
            return []
        by_pfn = None
        found: list[int] = []
        for a, _chunk in memory.pieces(addr, n):
            if space == "gpa":
                gfns = [a >> PAGE_SHIFT]
            elif space == "gva":
                w = guest_walk.walk(self.vm, self.cpu, a)
                gfns = [] if w.gpa is None else [w.gpa >> PAGE_SHIFT]
            elif space == "hpa":
                if by_pfn is None:          # host pfn -> the shadowed gfns backed by it
                    by_pfn = {}
                    for gfn in shadow.hash:
                        slot = self.vm.memslots.lookup(gfn)
                        pfn = None if slot is None else self.vm.host.lookup_pfn(slot.gfn_to_hva(gfn))
                        if pfn is not None:
                            by_pfn.setdefault(pfn, []).append(gfn)
                gfns = by_pfn.get(a >> PAGE_SHIFT, [])
            else:
                gfns = []
            for gfn in gfns:
                if gfn not in found and any(shadow.valid_pages(gfn, with_gptes=True)):
                    found.append(gfn)
        return found

    def decode_at(self, addr: int):
        """The instruction at a guest-virtual address (read without side effects), or None."""
        code = b""
        for i in range(15):
            try:
                code += self.read_memory(addr + i, 1)
            except CommandError:
                break
        return self.cpu.decoder.decode(code, addr, self.cpu.code_bits) if code else None

    def location(self, addr: int) -> str:
        sym = self.symbols.lookup(addr)
        return f"{addr:#x} {sym}" if sym else f"{addr:#x}"

    # --- running ---

    def step(self, n: int = 1) -> Stop:
        """Execute n instructions on the current vCPU."""
        from kvmdbg.kvm.scheduler import step_vcpu
        from kvmdbg.debug.engine import reverse
        if reverse.replaying(self):             # in the past: the recorded future
            return reverse.resume(self, self.current, n).stop
        cpu = self.cpu
        if cpu.shutdown:
            return self._stop(SHUTDOWN, self.current, cpu.shutdown)
        if cpu.halted:
            return self._stop(HALTED, self.current)
        try:
            reason = step_vcpu(self.vm.vcpus[self.current], n)
        except UnsupportedInstruction as e:
            return self._stop(UNSUPPORTED, self.current, str(e))
        return self._stop(reason, self.current, cpu.shutdown if reason == SHUTDOWN else "")

    def run(self, max_steps: int | None = None, breakpoints=None) -> Stop:
        """Run all vCPUs (smallest clock first) until something stops them: with stop points
        set by commands (break, watch, catch), those too, as `continue` does."""
        from kvmdbg.debug.engine import reverse
        if breakpoints is None and (len(self.breakpoints) or reverse.replaying(self)):
            from kvmdbg.debug.engine.stops import resume
            self.interrupt_requested = False
            return resume(self, max_steps=max_steps).stop
        limit = self.max_continue_steps if max_steps is None else max_steps
        self.interrupt_requested = False
        try:
            reason, v = run_vm(self.vm, limit, breakpoints, lambda: self.interrupt_requested)
        except UnsupportedInstruction as e:
            v = next((x for x in self.vm.vcpus if x.cpu.rip == e.rip), self.vm.vcpus[self.current])
            return self._stop(UNSUPPORTED, v.index, str(e))
        msg = v.cpu.shutdown if reason == SHUTDOWN else ""
        return self._stop(reason, v.index, msg)

    # --- reverse execution (engine/record.py, engine/reverse.py) ---

    def reverse_step(self, n: int = 1) -> Stop:
        """Back n instructions of the current vCPU (a stop point met on the way stops it)."""
        from kvmdbg.debug.engine import reverse
        return reverse.reverse_step(self, n).stop

    def reverse_continue(self) -> Stop:
        """Back to the most recent earlier breakpoint, watchpoint or catchpoint hit."""
        from kvmdbg.debug.engine import reverse
        return reverse.reverse_continue(self).stop

    def goto(self, step: int) -> Stop:
        """To step `step` of the current vCPU, in either direction."""
        from kvmdbg.debug.engine import reverse
        return reverse.goto(self, step).stop

    def _stop(self, reason: str, vcpu: int, message: str = "") -> Stop:
        self.flush_console()
        self.current = vcpu
        cpu = self.vm.vcpus[vcpu].cpu
        st = Stop(reason, vcpu, cpu.steps, cpu.rip, message)
        self.last_stop = st
        return st

    # --- commands ---

    def execute(self, line: str) -> str:
        """Run one command line; returns what it printed (when no output sink is set)."""
        start = len(self.lines)
        self.run_command(line)
        return "\n".join(self.lines[start:])

    def run_command(self, line: str, where: str = "") -> bool:
        """Run one command line; an error is reported as one line (after `where`, if given,
        as gdb does for sourced files). Returns False on error. At the outermost level the
        command lists of the breakpoints that stopped the program run afterwards."""
        if self._depth == 0:
            self.interrupt_requested = False
            if self.state.log is not None and self.state.block is None:
                self.state.log.write(f"(kvmdbg) {line}")
        ok = self._run(line, where)
        if self._depth == 0:
            self._flush_partial()
            from kvmdbg.debug.present.report import run_breakpoint_commands
            ok = run_breakpoint_commands(self) and ok
        return ok

    def _run(self, line: str, where: str = "") -> bool:
        from kvmdbg.debug.commands import QuitRequest
        if self.state.block is not None:          # inside commands/define ... end
            if self.state.block.feed(line):
                self.state.block = None
            return True
        self._depth += 1
        try:
            self.commands.execute(self, line)
            return True
        except QuitRequest:
            raise
        except (CommandError, ConfigError) as e:
            if str(e):                  # an empty message: reported already (sourced file)
                if where:
                    self.error(where)
                self.error(str(e))
        except KeyboardInterrupt:
            self.error("Quit")
        except RecursionError:          # not user commands (they count their own depth)
            self.error("Command nested too deeply for the Python stack -- command aborted.")
        except Exception as e:          # a bug: one line, and the session carries on
            self.error(f"internal error: {type(e).__name__}: {e}")
        finally:
            self._depth -= 1
        return False
