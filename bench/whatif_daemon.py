"""Runs the unchanged node daemon with one of its constants changed, to measure a proposed change.

    python3 bench/whatif_daemon.py --coalesce SECONDS -- DAEMON ARGS...

Loads node_script/dvic_node.py as a module, sets COALESCE_S (how long a pending log line waits
for more before a `logs` message goes out) and calls its main() with the daemon arguments. The
daemon reads the constant at run time, so nothing else changes. Standard library only and
Python 3.8 syntax: it runs under the same interpreters as the daemon.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

NODE_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "node_script", "dvic_node.py")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coalesce", type=float, required=True, help="COALESCE_S for this run (seconds, >= 0)")
    p.add_argument("daemon_args", nargs=argparse.REMAINDER, help="-- then the daemon's own arguments")
    args = p.parse_args()
    if args.coalesce < 0:
        p.error(f"--coalesce must be >= 0, got {args.coalesce!r}")
    daemon_args = args.daemon_args[1:] if args.daemon_args[:1] == ["--"] else args.daemon_args
    spec = importlib.util.spec_from_file_location("dvic_node", NODE_SCRIPT)
    if spec is None or spec.loader is None:
        p.error(f"cannot load {NODE_SCRIPT}")
    sys.dont_write_bytecode = True  # leave node_script/ as it is
    module = importlib.util.module_from_spec(spec)
    sys.modules["dvic_node"] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "COALESCE_S"):
        p.error(f"{NODE_SCRIPT} has no COALESCE_S any more: this what-if is out of date")
    module.COALESCE_S = args.coalesce
    return int(module.main(daemon_args))


if __name__ == "__main__":
    sys.exit(main())
