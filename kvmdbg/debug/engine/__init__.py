"""The debugger engine: the session, its stops (breakpoints, watchpoints, catchpoints),
running and stepping, expressions and their values, symbols, and reading guest memory
without side effects. Knows nothing of commands or terminals."""
