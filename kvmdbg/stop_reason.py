"""Why a run stopped: one enum for every layer (the CPU's run loop, KVM's vCPU loop and
scheduler, the debugger). Members are strings, so a reason prints and compares as its
value ("halted") in output, tests and the Python API."""

from __future__ import annotations

from enum import Enum


class StopReason(str, Enum):
    STEP_LIMIT = "step-limit"        # the step budget ran out
    BREAKPOINT = "breakpoint"        # about to execute an instruction with a breakpoint
    HALTED = "halted"                # HLT (or every vCPU halted)
    SHUTDOWN = "shutdown"            # triple fault (KVM_EXIT_SHUTDOWN)
    VMEXIT = "vmexit"                # the vCPU left guest mode: enter again and go on
    INTERRUPTED = "interrupted"      # Ctrl-C between instructions
    WATCHPOINT = "watchpoint"
    CATCHPOINT = "catchpoint"        # an MMU event a catchpoint asked for
    REACHED = "location"             # nexti / until / advance got where they were going
    UNSUPPORTED = "unsupported"      # an instruction the interpreter cannot run

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


(STEP_LIMIT, BREAKPOINT, HALTED, SHUTDOWN, VMEXIT, INTERRUPTED, WATCHPOINT, CATCHPOINT, REACHED,
 UNSUPPORTED) = StopReason
