"""`dvic console` (and `dvic` alone): the Textual operator console, in this terminal or served to a browser.

The one `tui.cmds` module that imports `tui.console`, and only when the console starts.
"""

from __future__ import annotations

import argparse

from tui.cmds.common import SettingsFn


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("console", parents=[parent], help="open the operator console (the default)")
    p.add_argument("--web", action="store_true", help="serve the console to a browser (textual-serve)")
    p.add_argument("--host", default="127.0.0.1", help="--web: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="--web: port (default 8000; 0 picks a free one)")
    p.add_argument("--tls-cert", metavar="FILE", help="--web: serve HTTPS with this certificate (needed off loopback)")
    p.add_argument("--tls-key", metavar="FILE", help="--web: the certificate's private key")
    p.add_argument("--public-url", metavar="URL", help="--web: the URL browsers open, when not http(s)://HOST:PORT/ "
                   "(the only origin accepted)")
    p.set_defaults(handler=run_console)


def run_console(args: argparse.Namespace, settings: SettingsFn) -> int:
    resolved = settings()
    if getattr(args, "web", False):
        from tui.console.web import serve

        return serve(resolved, args.host, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                     public_url=args.public_url)
    from tui.console.app import DvicApp

    DvicApp(resolved).run()
    return 0
