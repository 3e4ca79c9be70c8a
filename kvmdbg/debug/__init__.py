"""The debugger engine (bdb's role): sessions, commands, formats. No terminal I/O here."""
