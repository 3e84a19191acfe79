"""The `dvic` operator command line and the Textual operator console for DVIC Demo Monitor."""

__version__ = "0.1.0"
