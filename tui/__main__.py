"""Lets `python -m tui` run the `dvic` command (used by `dvic console --web` to start sessions)."""

import sys

from tui.cli import main

sys.exit(main())
