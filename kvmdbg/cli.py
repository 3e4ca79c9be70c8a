"""kvmdbg [OPTIONS] [PROGRAM]: parse gdb-style options, load the program, run scripts or the REPL."""

from __future__ import annotations

import argparse
import os
import sys

from kvmdbg.collector import tune as tune_collector
from kvmdbg.version import __version__
from kvmdbg.errors import KvmdbgError

DEFAULT_PROFILE = "v6.12"     # kvm/profiles.py DEFAULT (kept here so --help needs no imports)


COLOR_CHOICES = ("auto", "always", "never")


def _bare_color(argv: list) -> list:
    """`--color` alone means --color=always (ls, grep); `--color WHEN` with one of the words
    is still taken; any other next word (the program) is not the colour's."""
    out = []
    for i, a in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        out.append("--color=always" if a == "--color" and nxt not in COLOR_CHOICES else a)
        if a == "--":
            out.extend(argv[i + 1:])
            break
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, gdb style, instead of argparse's usage block.
        if message.startswith("unrecognized arguments: "):
            opt = message.split(": ", 1)[1].split()[0]
            if opt.startswith("-"):
                message = f"unrecognized option '{opt}'"
            else:                       # a second program path (argparse has taken one)
                message = f"only one program may be given (the second is '{opt}')"
        elif message.startswith("argument --arg: --arg "):
            message = message[len("argument --arg: "):]
        sys.stderr.write(f"kvmdbg: {message}\nUse `kvmdbg --help' for a complete list of options.\n")
        raise SystemExit(2)


class _Ordered(argparse.Action):
    """Keep -x and -ex in the order given (gdb runs them interleaved)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, "scripts", None) or []
        items.append(("file" if option_string == "-x" else "cmd", values))
        namespace.scripts = items


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvmdbg", allow_abbrev=False,
                description="A gdb-style debugger for a simulated x86-64 guest on a simulated KVM MMU.")
    p.add_argument("program", nargs="?", help="raw guest program (.bin), loaded at 0x100000")
    p.add_argument("-x", metavar="FILE", action=_Ordered, dest="scripts", help="run commands from FILE")
    p.add_argument("-ex", metavar="CMD", action=_Ordered, dest="scripts", help="run one command")
    p.add_argument("-batch", "--batch", action="store_true",
                   help="run the scripts then exit; status 1 if any command failed")
    p.add_argument("-q", "-quiet", "--quiet", action="store_true", help="no banner")
    p.add_argument("-nx", "--nx", action="store_true", help="do not read the init file")
    p.add_argument("--symbols", "-s", metavar="FILE",
                   help="read symbols and the DWARF line table from the ELF FILE (default: "
                        "PROGRAM.elf beside PROGRAM.bin, when there is one); gdb's -s, not "
                        "QEMU's (QEMU's -s is --gdb tcp::1234 here)")
    p.add_argument("--gdb", metavar="DEV",
                   help="serve gdb's remote protocol on DEV (QEMU's -gdb syntax): stdio "
                        "(gdb: target remote | kvmdbg --gdb stdio PROGRAM), tcp::PORT "
                        "(loopback; 0 picks a port, printed on stderr) or tcp:HOST:PORT; "
                        "after -x/-ex (which may set catchpoints), stopped where they left "
                        "the guest until gdb continues it; when gdb detaches from tcp, the "
                        "REPL takes over (-batch: kvmdbg exits)")
    p.add_argument("--compare", metavar="A,B[,...]",
                   help="run PROGRAM under each profile and print the side-by-side table")
    p.add_argument("--kvm", metavar="PROFILE", default=DEFAULT_PROFILE,
                   help=f"KVM behaviour profile (default {DEFAULT_PROFILE})")
    p.add_argument("--set", metavar="KNOB=VALUE", action="append", default=[],
                   help="override one profile knob (repeatable)")
    p.add_argument("--vcpus", metavar="N", type=_int, default=1, help="number of vCPUs (default 1)")
    p.add_argument("--mem", metavar="SIZE", default=None,
                   help="guest RAM, e.g. 16M (the raw machine's default; pc's is 128M), up to 1G")
    p.add_argument("--machine", metavar="NAME", default=None,
                   help="machine kind: raw (flat binaries) or pc (multiboot images, chosen "
                        "for them automatically); --machine list names them")
    p.add_argument("--append", metavar="ARGS", default="",
                   help="the multiboot command line's arguments (QEMU's -append)")
    p.add_argument("--cpu", metavar="[MODEL][,+FEAT,-FEAT]", default=None,
                   help="guest CPUID features, QEMU's spelling: e.g. qemu64,+pcid,-invpcid "
                        "(features: pcid invpcid smep smap pku nx pdpe1gb x2apic); the CPU "
                        "obeys them (#GP, #UD, #PF where the SDM says)")
    p.add_argument("--arg", metavar="N", type=_rdx, default=0,
                   help="value placed in RDX at start (-2**63 to 2**64-1)")
    p.add_argument("--color", metavar="WHEN", choices=COLOR_CHOICES, default="auto",
                   help="colour: auto (a terminal and no NO_COLOR, the default), always (also "
                        "with NO_COLOR or into a pipe), never; a bare --color is always, as for ls")
    p.add_argument("--version", action="version", version=f"kvmdbg {__version__}")
    return p


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{text}'") from None


ARG_MIN, ARG_MAX = -(1 << 63), (1 << 64) - 1      # as debug/commands/registry.py (no import here)


def _rdx(text: str) -> int:
    n = _int(text)
    if not ARG_MIN <= n <= ARG_MAX:
        raise argparse.ArgumentTypeError(f"--arg must be between {ARG_MIN} and {ARG_MAX} "
                                         f"(RDX is 64 bits) (got {n}).")
    return n


def _init_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "kvmdbg", "init")


def main(argv=None) -> int:
    args = build_parser().parse_args(_bare_color(sys.argv[1:] if argv is None else list(argv)))
    tune_collector()
    from kvmdbg.debug.engine.session import Session

    gdb_fds = None
    if args.gdb is not None:
        from kvmdbg.gdbstub import transport
        try:
            device = transport.parse_device(args.gdb)
        except KvmdbgError as e:
            sys.stderr.write(f"kvmdbg: {e}\n")
            return 2
        if device[0] == "stdio":        # stdout carries packets: everything else to stderr
            from kvmdbg.gdbstub import stdio_fds
            gdb_fds = stdio_fds()
            sys.stdout = sys.stderr
    output = Output()
    out = output.out
    if args.kvm == "list":
        from kvmdbg.kvm.profiles import PROFILES
        for p in PROFILES.values():
            out(f"{p.name:24} {p.summary}")
        return 0
    if args.machine == "list":
        from kvmdbg.kvm.machine import MACHINES
        for m in MACHINES.values():
            out(f"{m.name:6} {m.summary} (default RAM {m.default_mem})")
        return 0
    if args.compare is not None and args.program is not None:
        return _compare(args, out)
    if args.program is None:
        sys.stderr.write("kvmdbg: no program given. Try `kvmdbg programs/smep_flip.bin'.\n")
        return 2
    try:
        session = Session.load(args.program, kvm=args.kvm, knobs=args.set, vcpus=args.vcpus, mem=args.mem,
                               arg=args.arg, out=output.out, err=output.err,
                               machine=args.machine, append=args.append, cpu=args.cpu)
    except (KvmdbgError, ValueError) as e:
        sys.stderr.write(f"kvmdbg: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"kvmdbg: {args.program}: {e.strerror}.\n")
        return 1

    session.batch = bool(args.batch)
    if args.symbols:
        try:
            session.load_symbol_file(args.symbols, announce=True)
        except KvmdbgError as e:
            sys.stderr.write(f"{e}\n")
    interactive = not args.batch
    tty = sys.stdin.isatty() and interactive
    # Colour can be used on a terminal (not in -batch), or anywhere with --color=always; it
    # is on unless NO_COLOR or --color=never says otherwise (`set style enabled` changes it).
    color = args.color == "always" or (sys.stdout.isatty() and not args.batch)
    no_color = bool(os.environ.get("NO_COLOR"))
    session.state.settings.style = args.color == "always" or (args.color == "auto" and not no_color)
    session.style_why = "--color=never" if args.color == "never" else \
        "NO_COLOR is set" if args.color == "auto" and no_color else ""
    if color:
        from kvmdbg.repl.style import make_styler
        session.styler = make_styler(session)
    else:
        session.style_why = "in -batch" if args.batch else "when the output is not a terminal"
    session.out_raw = output.raw
    if args.batch:
        session.state.settings.confirm = False       # -batch answers every question yes
    session.unicode_output = (sys.stdout.encoding or "").lower().replace("-", "") == "utf8"
    from kvmdbg.gdbstub.commands import register as register_gdbserver
    register_gdbserver(session.commands)
    if gdb_fds is not None:
        interactive = tty = False
    if interactive and not args.quiet:
        n = args.vcpus
        ids = "vcpu 0 = thread 1" if n == 1 else f"vcpus 0-{n - 1} = threads 1-{n}"
        out(f"kvmdbg {__version__} -- KVM profile {args.kvm}, {n} vCPU(s) ({ids}), "
            + (f"{args.program} (multiboot, pc machine) entry {session.program.address:#x}"
               if session.program.image is not None else
               f"{args.program} loaded at {session.program.address:#x}"))
        out('Type "help" for a list of commands, "help mmu" for the ideas behind the views.')
        if args.gdb is not None:
            out(f"gdb drives the VM first (--gdb {args.gdb}); this prompt takes over when it "
                "detaches.")
    _install_interrupt(session)
    try:
        return _run_session(session, args, output, tty, color, gdb_fds)
    finally:
        session.flush_output()          # `echo b` at the very end prints b, no newline


def _run_session(session, args, output, tty, color, gdb_fds=None) -> int:
    from kvmdbg.debug.commands import QuitRequest
    from kvmdbg.debug.engine import script
    failed = False
    try:
        if not args.nx and os.path.isfile(_init_file()):
            failed |= not script.source_file(session, _init_file())
        for kind, value in getattr(args, "scripts", None) or []:
            if kind == "file":
                failed |= not script.source_file(session, value)
            else:
                failed |= not session.run_command(value)
        if args.gdb is not None:
            from kvmdbg.gdbstub import serve
            try:
                serve(session, args.gdb, fds=gdb_fds)
            except KvmdbgError as e:
                sys.stderr.write(f"kvmdbg: {e}\n")
                return 1
            if gdb_fds is not None:     # stdin was gdb's: nothing more to read
                return 1 if failed else 0
        if args.batch:
            if failed:
                return 1
            status = session.vm.exit_status        # isa-debug-exit: QEMU's (value << 1) | 1
            return status if status is not None else 0
        if tty:
            from kvmdbg.repl.app import interact
            return interact(session, output, color)
        return script.read_lines(session, sys.stdin)
    except QuitRequest as q:
        return q.code if not (args.batch and failed) else 1


class Output:
    """The session's output and error sinks (stdout, stderr). The REPL sets `capture` to
    a list to collect a command's output for the pager, then replays or pages it."""

    def __init__(self) -> None:
        self.capture = None

    def out(self, text: str) -> None:
        if self.capture is not None:
            self.capture.append((sys.stdout, text))
            return
        self._write(sys.stdout, text)

    def err(self, text: str) -> None:
        if self.capture is not None:
            self.capture.append((sys.stderr, text))
            return
        sys.stdout.flush()
        self._write(sys.stderr, text)

    def raw(self, text: str) -> None:
        """Text without a newline (what echo/printf left open before an error or a prompt)."""
        if self.capture is not None:
            self.capture.append((sys.stdout, text, ""))
            return
        self._write(sys.stdout, text, "")

    @staticmethod
    def lines(captured) -> list:
        """The captured output as lines (pieces written without a newline joined on)."""
        lines, open_line = [], ""
        for _stream, text, *end in captured:
            if end and end[0] == "":
                open_line += text
            else:
                lines.append(open_line + text)
                open_line = ""
        return lines + ([open_line] if open_line else [])

    def stop_capture(self) -> None:
        """Print what was captured so far and let the rest of the command print as it goes."""
        captured, self.capture = self.capture, None
        if captured:
            self.replay(captured)

    def replay(self, captured) -> None:
        for stream, text, *end in captured:
            self._write(stream, text, *end)

    @staticmethod
    def _write(stream, text: str, end: str = "\n") -> None:
        try:
            stream.write(text + end)
            stream.flush()
        except BrokenPipeError:         # `kvmdbg ... | head`: the reader left
            raise SystemExit(0) from None


def use_color(choice: str, stream) -> bool:
    """--color always|never decide; auto means a terminal and no (non-empty) NO_COLOR.
    NO_COLOR is a default, not an override: no-color.org asks that "command-line arguments
    ... override $NO_COLOR", so --color=always (and `set style enabled on`) win over it."""
    if choice != "auto":
        return choice == "always"
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _install_interrupt(session) -> None:
    """Ctrl-C while a command runs: ask the run loop to stop between instructions; a second
    Ctrl-C before it notices abandons the command ("Quit"). At the prompt, prompt_toolkit
    sees Ctrl-C as a key and clears the line."""
    import signal

    def on_sigint(signum, frame):
        if session.interrupt_requested:
            raise KeyboardInterrupt
        session.interrupt_requested = True

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:                  # not the main thread (embedded use)
        pass


if __name__ == "__main__":
    raise SystemExit(main())


def _compare(args, out) -> int:
    """kvmdbg --compare A,B[,...] PROGRAM: the compare table, without a session."""
    import signal

    from kvmdbg.debug.compare import format_table, interrupted_line, run_all
    from kvmdbg.kvm import boot
    names = [n.strip() for n in args.compare.split(",") if n.strip()]
    if len(names) < 2:
        sys.stderr.write("kvmdbg: --compare needs two profiles or more, e.g. --compare v5.15,v6.6\n")
        return 2
    asked = []

    def on_sigint(signum, frame):       # the first Ctrl-C stops the run between instructions
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        program = boot.load_program(args.program)
        results, not_run = run_all(program, names, args.vcpus, args.mem, args.arg, args.set,
                                   interrupted=lambda: bool(asked))
    except (KvmdbgError, ValueError) as e:
        sys.stderr.write(f"kvmdbg: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("kvmdbg: interrupted.\n")
        return 130
    for line in format_table(results):
        out(line)
    if asked:
        sys.stderr.write(f"kvmdbg: {interrupted_line(results, not_run)}\n")
        return 130
    return 0
