"""The terminal UI: the only users of prompt_toolkit and pygments."""
