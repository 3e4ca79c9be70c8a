"""Pictures of MMU life drawn from the event log: the terminal timeline and the trace
exports (Chrome trace-event JSON for Perfetto, trace-cmd report text).

history reads the log into lifetimes and spans; each picture is a formatter over that,
so the commands (debug/commands/pictures.py) only parse arguments and write output.
"""
