"""Threads count from 1 as in gdb and QEMU's gdb stub (thread 1 is vCPU 0); `vcpu N`
keeps KVM's 0-based ids, and the banner and `info vcpus` show both (issue 13)."""

import os
import sys
from pathlib import Path

import pexpect

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb_program, oracle_program

__all__ = ["oracle_program"]
ROOT = Path(__file__).resolve().parents[2]
TWO = "programs/smep_flip_2vcpu.bin"


@needs_gdb_program
def test_thread_numbers_and_messages_are_gdbs(oracle_program):
    theirs = gdb("starti", "info threads", "thread", "thread 0", "thread 2", "thread x",
                 "info threads 5", program=oracle_program)[-7:]
    assert theirs[1].startswith("* 1    process ")            # the first thread is 1
    assert theirs[2].startswith("[Current thread is 1 (process ")
    assert theirs[3:] == ["Invalid thread ID: 0", "Unknown thread 2.", "Invalid thread ID: x",
                          "No threads match '5'."]
    rc, out, err = kvmdbg("info threads", "thread", "thread 2", "info threads", "thread 0",
                          "thread 3", "thread x", "info threads 5", "vcpu", "vcpu 0", "thread",
                          program=TWO, options=["--vcpus", "2"])
    assert out[:11] == [
        "  Id   Target Id          Frame",
        "* 1    vCPU 0 (runnable)  0x100000 <start>, step 0",
        "  2    vCPU 1 (runnable)  0x100000 <start>, step 0",
        "[Current thread is 1 (vCPU 0)]",
        "[Switching to thread 2 (vCPU 1)]",
        "#0  0x100000 <start>, vcpu 1, step 0",
        "=> 0x100000 <start>:\ttest rdx, rdx",
        "26\t\ttest\trdx, rdx",
        "  Id   Target Id          Frame",
        "  1    vCPU 0 (runnable)  0x100000 <start>, step 0",
        "* 2    vCPU 1 (runnable)  0x100000 <start>, step 0"]
    assert out[11] == "[Current vcpu is 1 (of 2), step 0, runnable]"       # the same vCPU
    assert out[-1] == "[Current thread is 1 (vCPU 0)]"
    assert err == ["Invalid thread ID: 0", "Unknown thread 3.", "Invalid thread ID: x",
                   "No threads match '5'."]


def test_info_vcpus_shows_the_vcpu_id_and_the_thread_number():
    rc, out, err = kvmdbg("info vcpus", program=TWO, options=["--vcpus", "2"])
    assert out[0].split() == ["Id", "Thread", "State", "Step", "Cycles", "Where"]
    assert out[1].split()[:4] == ["*", "0", "1", "runnable"]
    assert out[2].split()[:3] == ["1", "2", "runnable"]


def test_the_banner_shows_both_numberings():
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", NO_COLOR="1",
               XDG_CONFIG_HOME="/nonexistent-kvmdbg-test", XDG_STATE_HOME="/tmp/kvmdbg-test-state")
    c = pexpect.spawn(sys.executable, ["-m", "kvmdbg", "--vcpus", "2", TWO], env=env,
                      cwd=str(ROOT), encoding="utf-8", timeout=30, dimensions=(50, 160))
    try:
        c.expect(r"\(kvmdbg\)")
        assert "2 vCPU(s) (vcpus 0-1 = threads 1-2)" in c.before
    finally:
        c.close(force=True)
