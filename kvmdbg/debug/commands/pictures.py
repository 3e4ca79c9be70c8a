"""Pictures of MMU life: `timeline` draws roots, CR writes, memslot changes, markers and
EPT violations across simulated time in the terminal; `trace export` writes the event
log for Perfetto (Chrome trace-event JSON) or in trace-cmd's text format.

Both read only the recorded event log (and, for the counter tracks, samples taken at
exits); nothing here runs the guest. Drawing lives in debug/pictures/.
"""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

from kvmdbg.debug.commands.registry import list_subcommands, usage_error
from kvmdbg.debug.pictures import chrome, ftrace
from kvmdbg.debug.pictures.history import time_range
from kvmdbg.debug.pictures.samples import start_sampling
from kvmdbg.debug.pictures.timeline import ASCII, LABEL_WIDTH, MIN_WIDTH, UNICODE, Window, render
from kvmdbg.errors import CommandError
from kvmdbg.version import __version__

DEFAULT_WIDTH = 80
DEFAULT_MAX_ROOTS = 24
FORMATS = ("chrome", "ftrace")


# --- attaching to a session ---

def attach(s) -> None:
    """Sample counters for the trace export; pictures are ASCII until the front end says
    the output can show Unicode (the CLI sets s.unicode_output from its stdout)."""
    if not hasattr(s, "unicode_output"):
        s.unicode_output = False
    _sample(s)
    s.restart_hooks.append(_sample)


def _sample(s) -> None:
    s.counter_sampler = start_sampling(s.vm)


def _recorded(s) -> list:
    events = list(s.vm.bus.log)
    if not events:
        raise CommandError("No events recorded: pictures are drawn from the event log "
                           "(run the program first).")
    return events


def _number(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise CommandError(f"Invalid number \"{text}\".") from None
    if n < 0:
        raise CommandError(f"Invalid number \"{text}\": times are not negative.")
    return n


# --- timeline ---

def timeline(s, arg: str) -> None:
    """timeline [--ascii|--unicode] [--steps] [--roots N] [FROM [TO]]

    One line per EPT root across simulated time, from its allocation to its free, with
    its zaps marked; below them an axis with CR writes (the register's digit) and memslot
    changes, the values written to the marker port 0x512, and a sparkline of EPT
    violations per column. FROM and TO are simulated cycles (default: the whole event
    log); with --steps they are instruction counts of the current vCPU. The width is
    80 columns or `set width`. --roots N shows at most N root lines (0: all; default
    24), folding the middle ones. Unicode on a UTF-8 terminal, ASCII otherwise;
    --ascii and --unicode choose.
    """
    opts = _timeline_options(arg)
    events = _recorded(s)
    first, last = time_range(events)
    start, end = _timeline_range(s, events, opts, first, last)
    width = s.state.settings.width or DEFAULT_WIDTH
    if width < MIN_WIDTH:
        raise CommandError(f"The timeline needs at least {MIN_WIDTH} columns (width is {width}).")
    use_unicode = s.unicode_output if opts["unicode"] is None else opts["unicode"]
    glyphs = UNICODE if use_unicode else ASCII
    window = Window(start, end, width - LABEL_WIDTH)
    body = render(events, window, glyphs, opts["roots"])
    head = f"cycles {start:,}..{end:,}, {window.per_column:,} per column; profile {s.vm.profile.name}"
    if events[0].seq > 1:
        head += f" (the event ring dropped older events: the log starts at cycle {first:,})"
    for line in textwrap.wrap(head, width) + body:
        s.message(line)


def _timeline_options(arg: str) -> dict:
    opts = {"unicode": None, "steps": False, "roots": DEFAULT_MAX_ROOTS, "times": []}
    words = arg.split()
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("--ascii", "--unicode"):
            opts["unicode"] = w == "--unicode"
        elif w == "--steps":
            opts["steps"] = True
        elif w == "--roots" or w.startswith("--roots="):
            value = w.partition("=")[2] if "=" in w else (words[i + 1] if i + 1 < len(words) else "")
            if not value:
                raise usage_error(timeline, "--roots needs a number.")
            opts["roots"] = _number(value)
            i += 0 if "=" in w else 1
        elif w.startswith("-") and not w[1:2].isdigit():
            raise usage_error(timeline, f"Unknown option \"{w}\".")
        else:
            opts["times"].append(_number(w))
        i += 1
    if len(opts["times"]) > 2:
        raise usage_error(timeline, "At most two times (FROM and TO).")
    return opts


def _timeline_range(s, events, opts, first: int, last: int) -> tuple[int, int]:
    times = opts["times"]
    if opts["steps"]:
        times = [_step_to_cycles(s, events, n, i == 0) for i, n in enumerate(times)]
    start = times[0] if times else first
    end = times[1] if len(times) > 1 else last
    unit = "steps" if opts["steps"] else "cycles"
    if len(times) > 1 and start >= end:
        raise CommandError(f"Bad range: FROM ({opts['times'][0]}) must be below TO "
                           f"({opts['times'][1]}) {unit}.")
    if start >= last:
        raise CommandError(f"Bad range: the log ends at cycle {last:,}; FROM must be below it.")
    if end <= first:
        raise CommandError(f"Bad range: the log starts at cycle {first:,}; TO must be above it.")
    return start, end


def _step_to_cycles(s, events, step: int, is_from: bool) -> int:
    """The clock of the current vCPU's first event at or after `step` (FROM), or of its
    last event at or before it (TO)."""
    mine = [e for e in events if e.vcpu == s.current]
    pick = ([e for e in mine if e.step >= step][:1] if is_from
            else [e for e in mine if e.step <= step][-1:])
    if not pick:
        where = "at or after" if is_from else "at or before"
        raise CommandError(f"Bad range: vcpu {s.current} has no events {where} step {step}.")
    return pick[0].cycles


# --- trace export ---

def trace_cmd(s, arg: str) -> None:
    """trace SUBCOMMAND

    Write the event log out: "trace export FILE" (Perfetto JSON, or trace-cmd text with
    --format ftrace).
    """
    list_subcommands(s, "trace", "a trace subcommand")


def trace_export(s, arg: str) -> None:
    """trace export [--format chrome|ftrace] FILE

    Write the recorded events to FILE. chrome (the default): Chrome trace-event JSON that
    ui.perfetto.dev opens, with a track per vCPU (exits as slices), one for the zap
    worker, one per EPT root from allocation to free (zaps as instants), flushes and
    markers as instants, and counter tracks for live SPTEs and TLB entries; timestamps
    are microseconds of simulated time at 3 GHz. ftrace: the kernel's text format as
    `trace-cmd report` prints it, one line per event.
    """
    fmt, path = _export_options(arg)
    events = _recorded(s)
    nr_vcpus = len(s.vm.vcpus)
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            if fmt == "ftrace":
                n = ftrace.write_text(f, events, nr_vcpus)
            else:
                program = Path(s.program.path).name if s.program.path else "<bytes>"
                other = {"generator": f"kvmdbg {__version__}", "program": program,
                         "profile": s.vm.profile.name, "vcpus": nr_vcpus, "events": len(events),
                         "first_seq": events[0].seq}
                n = chrome.write_json(f, events, _samples(s), nr_vcpus,
                                      f"kvmdbg: {program} ({s.vm.profile.name})", other)
    except OSError as e:
        raise CommandError(f"Cannot write \"{path}\": {e.strerror or e}.") from None
    s.message(f"Wrote {n} {'lines' if fmt == 'ftrace' else 'trace events'} to {path} ({fmt}).")


def _export_options(arg: str) -> tuple[str, str]:
    try:
        words = shlex.split(arg)
    except ValueError as e:
        raise usage_error(trace_export, f"{e}.") from None
    fmt = "chrome"
    rest = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "--format" or w.startswith("--format="):
            fmt = w.partition("=")[2] if "=" in w else (words[i + 1] if i + 1 < len(words) else "")
            i += 0 if "=" in w else 1
            if fmt not in FORMATS:
                raise usage_error(trace_export, f"Unknown format \"{fmt}\" (chrome or ftrace).")
        elif w.startswith("--"):
            raise usage_error(trace_export, f"Unknown option \"{w}\".")
        else:
            rest.append(w)
        i += 1
    if len(rest) != 1:
        raise usage_error(trace_export, "One FILE is needed." if not rest else "Only one FILE.")
    return fmt, rest[0]


def _samples(s):
    sampler = getattr(s, "counter_sampler", None)
    return list(sampler.samples) if sampler is not None else []


def register(reg) -> None:
    reg.add("timeline", timeline, category="mmu")
    reg.add("trace", trace_cmd, category="mmu")
    reg.sub("trace").add("export", trace_export, category="mmu")
