"""The debugger, no terminal I/O here (bdb's role): engine/ (the session, breakpoints,
watchpoints and catchpoints, stops and stepping, expressions, symbols, side-effect-free
memory reads), commands/ (the command families; their docstrings are the help), present/
(how values, registers, stops and suggestions are shown), pictures/ (timelines, trace
export) and compare.py (one program under several profiles)."""
