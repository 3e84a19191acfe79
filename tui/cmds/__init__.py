"""The `dvic` subcommands, one module per area; `tui.cli` wires them to argparse."""
