"""The Textual operator console: the app, the live feed, the palette, the hand-over, screens and widgets.

Layer 2 of tui/ beside the `dvic` commands (docs/architecture.md): it imports the API client
library (`tui.api`) and the shared leaves, never `tui.cmds` or `tui.cli` (tests/test_layers.py).
"""
