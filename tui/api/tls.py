"""The one TLS policy of every client of the operator API (the commands, the console, the installer,
`dvic-central node ...`): `https://` trusts only the pinned CA, never the system's roots; plain
`http://` is allowed only to a server on this machine (the token would cross the network in clear).

The loopback test is written by hand: the `ipaddress` module (with urllib) costs `dvic run` a few
milliseconds at start-up, and the question here is narrow.
"""

from __future__ import annotations

import ssl

from tui.api.core import split_url
from tui.api.errors import ConfigError

_HEX = frozenset("0123456789abcdef")


def is_loopback(host: str) -> bool:
    """`localhost`, an IPv4 address in 127.0.0.0/8 or the IPv6 loopback (as `ipaddress` reads them)."""
    host = host.lower()
    if host == "localhost":
        return True
    if ":" in host:
        return _ipv6_is_loopback(host)
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(
        p.isascii() and p.isdigit() and (p == "0" or p[0] != "0") and int(p) <= 255 for p in parts)


def _ipv6_is_loopback(host: str) -> bool:
    head, gap, tail = host.partition("::")
    left = head.split(":") if head else []
    right = tail.split(":") if tail else []
    if gap:
        if "::" in tail or len(left) + len(right) > 7:
            return False
        groups = left + ["0"] * (8 - len(left) - len(right)) + right
    else:
        groups = left
    if len(groups) != 8 or not all(0 < len(g) <= 4 and set(g) <= _HEX for g in groups):
        return False
    return all(int(g, 16) == 0 for g in groups[:7]) and int(groups[7], 16) == 1


def check(server: str, ca: str | None, ca_pem: str | None = None) -> str:
    """The URL's scheme once the policy allows `server` with this CA, else a ConfigError saying why."""
    try:
        scheme, _, host, _ = split_url(server)
    except ValueError:  # unbalanced brackets, a port out of range
        scheme, host = server.partition("://")[0], None
    if scheme not in ("https", "http"):
        raise ConfigError(f"server URL must start with https:// (got {server!r})", "bad_url")
    if not host:
        raise ConfigError(f"server URL {server!r} names no host (or a port out of range)", "bad_url")
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"refusing plain http:// to {host!r}: the token would cross the network in clear; "
            "use the server's https:// URL (plain http:// is for a server on this machine only: "
            "127.0.0.1, ::1 or localhost)", "insecure_url")
    if scheme == "https" and not ca and ca_pem is None:
        raise ConfigError("no CA to pin: run `dvic login URL`, or pass --ca FILE (or set DVIC_CA)", "no_ca")
    return scheme


def context(server: str, ca: str | None, ca_pem: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for `server` trusting only the pinned CA (a PEM text or file); None for http."""
    if check(server, ca, ca_pem) == "http":
        return None
    try:
        if ca_pem is not None:
            return ssl.create_default_context(cadata=ca_pem)
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        where = f"the CA file {ca}" if ca_pem is None else "the CA"
        raise ConfigError(f"cannot load {where} to pin: {exc}", "bad_ca") from exc
