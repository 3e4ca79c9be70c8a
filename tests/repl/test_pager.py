"""Long output is paged at the terminal; commands that run the guest never are."""

from kvmdbg.cli import Output
from kvmdbg.debug.engine.repeat import run_typed_line
from kvmdbg.repl import app, pager
from tests.debug.util import smep


def test_long_output_goes_to_the_pager_and_short_output_does_not(monkeypatch, capsys):
    paged = []
    monkeypatch.setattr(pager, "page", lambda lines, height=0, width=0: paged.append(lines) or len(lines) > 20)
    out = Output()
    s = smep(out=out.out, err=out.err)
    app._run_paged(s, out, "x/64xg 0x100000", run_typed_line)
    assert len(paged) == 1 and len(paged[0]) == 32
    assert capsys.readouterr().out == ""                  # the pager showed it
    app._run_paged(s, out, "print 1", run_typed_line)
    assert capsys.readouterr().out == "$1 = 1\n"          # too short: printed as usual
    app._run_paged(s, out, "stepi", run_typed_line)
    assert len(paged) == 2 and "vcpu 0, step 1" in capsys.readouterr().out
    s.execute("set pagination off")
    app._run_paged(s, out, "x/64xg 0x100000", run_typed_line)
    assert len(paged) == 2 and capsys.readouterr().out.count("\n") == 32


def test_pager_only_when_the_output_is_taller_than_the_screen(monkeypatch):
    calls = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            calls.append(cmd)

        def communicate(self, text):
            calls.append(text)

    monkeypatch.setattr(pager.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("PAGER", "mypager")
    assert not pager.page(["a"] * 5, height=24)
    assert pager.page(["a"] * 30, height=24)
    assert calls == ["mypager", "\n".join(["a"] * 30) + "\n"]
