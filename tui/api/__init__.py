"""The operator API client library shared by the `dvic` commands, the console and the installer.

Layer 1 of tui/ (docs/architecture.md): no textual, rich or argparse, and no `tui.cmds`,
`tui.console` or `tui.cli` import (tests/test_layers.py). Empty on purpose: `dvic run` imports
some of its modules at start-up and must not pay for the others.
"""
