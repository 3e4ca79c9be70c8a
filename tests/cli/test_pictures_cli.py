"""timeline and trace export through the real kvmdbg executable in batch mode: the
output encoding decides Unicode or ASCII, and bad input costs one line and exit status 1."""

import json
import re
from pathlib import Path
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")


def kvmdbg(*args, encoding="utf-8"):
    return run_cli(*args, encoding=encoding)


def test_trace_export_from_batch_mode(tmp_path):
    path = tmp_path / "x.json"
    text = tmp_path / "x.txt"
    rc, out, err = kvmdbg("-batch", "--kvm", "v5.15", "--arg", "20", "-ex", "continue",
                          "-ex", f"trace export {path}", "-ex", f"trace export --format ftrace {text}", SMEP)
    assert rc == 0 and err == "", err
    assert re.search(rf"Wrote \d+ trace events to {re.escape(str(path))} \(chrome\)\.", out)
    doc = json.loads(path.read_text())
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert slices and all({"ts", "dur", "pid", "tid"} <= set(e) for e in slices)
    roots = [e for e in slices if e["name"].startswith("root #")]
    assert len(roots) == 21
    assert text.read_text().startswith("cpus=2\n")


def test_timeline_is_unicode_on_utf8_and_ascii_otherwise():
    args = ("-batch", "--kvm", "v6.12", "--arg", "20", "-ex", "continue", "-ex", "timeline", SMEP)
    rc, fancy, err = kvmdbg(*args, encoding="utf-8")
    assert rc == 0 and err == ""
    assert "root #1     ┣━━━" in fancy
    rc, plain, err = kvmdbg(*args, encoding="ascii")
    assert rc == 0 and err == ""
    assert "root #1     [===" in plain and plain.isascii()


def test_bad_input_is_one_line_and_fails_the_batch():
    rc, out, err = kvmdbg("-batch", "--arg", "3", "-ex", "continue",
                          "-ex", "trace export /nonexistent/dir/x.json", "-ex", "timeline 9 2", SMEP)
    assert rc == 1
    assert err.splitlines() == ['Cannot write "/nonexistent/dir/x.json": No such file or directory.',
                                "Bad range: FROM (9) must be below TO (2) cycles."]
