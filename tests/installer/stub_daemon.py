"""A stand-in node daemon for installer tests: posts keep-alives with the bundle's token until stopped.

Standard library only and Python 3.8 syntax, like the real daemon; same command line
(--config BUNDLE [--state-dir DIR] [--shell-user USER]).
"""

import argparse
import json
import os
import signal
import ssl
import sys
import time
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--state-dir", default="/var/lib/dvic-node")
    parser.add_argument("--log-dir", default="")
    parser.add_argument("--shell-user", default=None)
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args()
    with open(args.config) as fh:
        bundle = json.load(fh)
    ctx = ssl.create_default_context(cadata=bundle["ca_pem"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        req = urllib.request.Request(bundle["keepalive_url"], data=b"{}", method="POST", headers={
            "Authorization": "Bearer " + bundle["token"], "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=5).read()
        except OSError as exc:
            print("keepalive failed: " + str(exc), flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
