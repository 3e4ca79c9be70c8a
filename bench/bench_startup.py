"""Start-up time: to the first prompt on a terminal, and `kvmdbg -batch -ex quit`.

    python3 bench/bench_startup.py [RUNS]

Prints the reference loop's time (bench/reference_loop.py), then the median and the best
of RUNS (default 7) fresh processes for each, and the median divided by the reference
loop's time; the target is under 0.5 s each (issue #4). The prompt is timed on a
pseudo-terminal (pexpect) from spawning the process until "(kvmdbg)" is drawn.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference_loop import Reference  # noqa: E402

PROGRAM = str(ROOT / "programs" / "smep_flip.bin")
TARGET = 0.5


def _env(tmp: str) -> dict:
    return dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", XDG_STATE_HOME=tmp, XDG_CONFIG_HOME=tmp,
                TERM="xterm")


def time_batch_quit(tmp: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kvmdbg", "-batch", "-ex", "quit", PROGRAM],
                   env=_env(tmp), cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def time_first_prompt(tmp: str) -> float:
    import pexpect
    t = time.perf_counter()
    child = pexpect.spawn(sys.executable, ["-m", "kvmdbg", PROGRAM], env=_env(tmp), cwd=str(ROOT),
                          encoding="utf-8", timeout=30, dimensions=(40, 120))
    child.expect(r"\(kvmdbg\)")
    elapsed = time.perf_counter() - t
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    return elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    ref = Reference()
    print(ref.line())
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("first prompt (terminal)", time_first_prompt),
                         ("kvmdbg -batch -ex quit", time_batch_quit)):
            fn(tmp)                                    # warm the file cache
            times = [fn(tmp) for _ in range(runs)]
            med = statistics.median(times)
            verdict = "ok" if med < TARGET else "over target"
            print(f"{name:<26} median {med * 1000:6.0f} ms   best {min(times) * 1000:6.0f} ms   "
                  f"(target < {TARGET * 1000:.0f} ms: {verdict}) = {ref.loops(med):.2f} reference loops")
    print(ref.end_line())


if __name__ == "__main__":
    main()
