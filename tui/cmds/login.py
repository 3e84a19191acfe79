"""`dvic login URL`: pin the server's CA after the user confirmed its fingerprint, then store a token."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from tui.api import pinning
from tui.api.aio import AsyncClient
from tui.api.config import ConfigError, Settings, Store, check_plain_http, read_token_file
from tui.api.errors import ApiError
from tui.cmds.common import SettingsFn, say
from tui.textsafe import clean


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("login", parents=[parent], help="connect to a server: pin its CA and store a token")
    p.add_argument("url", help="the server, e.g. https://10.0.0.5:8443")
    p.add_argument("--register", metavar="NAME", help="ask for a new account NAME instead of giving a token")
    p.add_argument("--yes", action="store_true", help="accept the CA fingerprint without asking")
    p.add_argument("--fingerprint", metavar="SHA256", help="accept the CA only if its SHA-256 is this")
    p.set_defaults(handler=run_login)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def run_login(args: argparse.Namespace, settings: SettingsFn) -> int:
    url = args.url.rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"server URL must start with https:// (got {url!r})")
    check_plain_http(url)  # before anything is sent: a token must not cross the network in clear
    ca: pinning.PinnedCA | None = None
    if url.startswith("https://"):
        if getattr(args, "ca", None):
            ca = pinning.from_pem_file(args.ca)
        else:
            ca = pinning.pick_ca(await pinning.fetch_chain(url))
        say(f"Server {url}\nCA SHA-256 fingerprint: {pinning.pretty(ca.sha256)}")
        if args.fingerprint:
            if pinning.normalise(args.fingerprint) != ca.sha256:
                raise pinning.PinError(
                    "the server's CA fingerprint does not match --fingerprint: refusing to pin it "
                    "(someone may be intercepting the connection)"
                )
        elif not args.yes and not _confirm("Trust this CA? Compare with the server's ca.pem [y/N] "):
            print("dvic: not trusted; nothing stored (use --yes or --fingerprint SHA256 non-interactively)",
                  file=sys.stderr)
            return 1
    # From here on the connection is verified strictly against the pinned CA.
    pem = ca.pem if ca else None
    async with AsyncClient(Settings(server=url, token=None, ca=None, ca_pem=pem)) as anon:
        await anon.health()
        code = ""
        if args.register:
            doc = await anon.register(args.register)
            token = str(doc.get("token", ""))
            code = clean(str(doc.get("code", "")), single_line=True)
            if not token:
                raise ApiError(200, "bad_response", "the server did not return a token")
        else:
            token = _given_token(args)
            if not token:
                if not sys.stdin.isatty():
                    raise ConfigError("no token: pass --token-file FILE (or set DVIC_TOKEN), "
                                      "or --register NAME to ask for an account")
                token = getpass.getpass("API token: ").strip()
            if not token:
                raise ConfigError("no token given; nothing stored")
    async with AsyncClient(Settings(server=url, token=token, ca=None, ca_pem=pem)) as api:
        me = await api.me()
    Store().save(url, ca.pem if ca else None, ca.sha256 if ca else None, token)
    name, role, status = me.get("name", "?"), me.get("role", "?"), me.get("status", "?")
    say(f"Logged in to {url} as {name} (role {role}, {status}); settings in {Store().dir}")
    if status != "active" and code:
        say(f"Your one-time code: {code}\n"
            "Tell it to an administrator yourself (in person, or by a channel they know is yours): "
            f"they need it to approve your account (`dvic operators approve {name} --code {code}`).")
    elif status != "active":
        say("Your account waits for an administrator's approval.")
    return 0


def _given_token(args: argparse.Namespace) -> str:
    """--token, --token-file, DVIC_TOKEN or DVIC_TOKEN_FILE, in that order ("" when none)."""
    token = getattr(args, "token", None)
    path = getattr(args, "token_file", None)
    if token and path:
        raise ConfigError("give either --token or --token-file, not both")
    if path:
        return read_token_file(path)
    if token or os.environ.get("DVIC_TOKEN"):
        return token or os.environ["DVIC_TOKEN"]
    if os.environ.get("DVIC_TOKEN_FILE"):
        return read_token_file(os.environ["DVIC_TOKEN_FILE"], "DVIC_TOKEN_FILE")
    return ""
