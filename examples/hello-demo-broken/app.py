"""A broken build of the example demo: it fails at start (a missing setting, say)."""

import sys

print("cannot start: HELLO_DEVICE is not set", file=sys.stderr, flush=True)
sys.exit(1)
