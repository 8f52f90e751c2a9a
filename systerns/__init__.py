"""Systerns: runtime threat detection for Linux containers from system calls."""

__version__ = "0.1.0"
