"""`dvic add-node` and `dvic remove-node`: registered by the installer package (installer/cli.py).

Absent when the installer is not installed; importing it imports asyncssh, so only these commands do.
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    try:
        from installer import cli as installer_cli
    except ImportError:
        return
    installer_cli.register(sub)
