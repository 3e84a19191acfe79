"""DVIC Demo Monitor central server."""

__version__ = "0.1.0"
