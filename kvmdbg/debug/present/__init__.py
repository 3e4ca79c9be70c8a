"""Presentation: how values, registers, stops and suggestions are shown to a person."""
