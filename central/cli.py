"""`dvic-central`: run the server, enroll and revoke nodes, bring up the local quick-start stack."""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import contextlib
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from dvic_core.constants import NODE_KINDS
from tui.api import calls

from . import __version__
from .accesslog import MODES as ACCESS_LOG_MODES
from .app import create_app
from .auth import ApiError
from .cluster.replica import ReplicaNameError, check_replica_name
from .config import Config, ConnectionLimits, DemoLimits, Notify, is_loopback
from .db import DB_FILE
from .dbconn import DatabaseUnavailable, Target, target
from .enroll import enroll_node
from .listener import ConnectionGuard, GuardedSite, MalformedRequestLog, fit_to_fd_limit
from .local import admin_call, announce, call_running, running_server, withdraw
from .nodehub import NODE_DOOR
from .pki import write_private
from .proxyproto import Balancers, parse_sources
from .services import ADMIN_TOKEN_FILE, SERVICES, close_services, open_services

SSL_READ_BUFFER = 16 * 1024
DEFAULT_DATA_DIR = "~/.local/share/dvic-central"
T = TypeVar("T")
N = TypeVar("N", int, float)
log = logging.getLogger("dvic-central")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_config(args: argparse.Namespace) -> Config:
    host, port = args.listen
    return Config(
        data_dir=Path(args.data_dir).expanduser(), database=args.database, replica=args.replica, host=host, port=port, tls=not args.insecure_http,
        public_hosts=tuple(args.public_host or ()), public_url=args.public_url or "",
        interval=args.interval, offline_after=args.offline_after,
        tunnel_ports=tuple(args.tunnel_port or (22,)), self_register=args.self_register,
        access_log=args.access_log, metrics_allow=tuple(args.metrics_allow or ()),
        proxy_protocol_from=args.proxy_protocol_from,
        max_booking=args.max_booking_days * 86400, **_settings(args),
    )


def _zone_name(text: str) -> str:
    from .calendar.hours import HoursError, zone

    try:
        zone(text)
    except HoursError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _at_least_one(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = _number(text, float, "a number of seconds")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _number(text: str, kind: Callable[[str], N], expected: str) -> N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def _byte_size(text: str) -> int:
    """A size in bytes, with an optional K, M or G suffix (powers of 1024): 1048576, 512K, 32M."""
    number, unit = text.strip(), ""
    if number[-1:].upper() in _SIZE_UNITS and number[-1:].isalpha():
        number, unit = number[:-1], number[-1:].upper()
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 1048576, 512K or 32M, got {text!r}")
    return int(number) * _SIZE_UNITS[unit]


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an address or network such as 10.0.0.5 or 10.0.0.0/24, "
                                         f"got {text!r}") from None


def _proxy_sources(text: str) -> tuple[str, ...]:
    try:
        return parse_sources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _https_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise argparse.ArgumentTypeError(f"expected the server's base URL such as https://monitor.lab:8443, got {text!r}")
    return text.rstrip("/")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# Python collects its youngest generation every 700 new container objects. A busy server makes
# several per log line (parsed JSON, rows, stream frames), so at 2,000 nodes collections took
# about a sixth of the event loop (bench/fleet.py). Collect young objects 70x less often, and
# leave what start-up built (routes, node states, certificates) out of collections for good.
GC_THRESHOLDS = (50_000, 20, 100)
# The writer thread gives the GIL up around each SQLite statement; taking it back from a busy
# event loop waits up to this interval (Python's default 5 ms), several times per commit
# (bench/writer_paths.py: 2,800 rows/s at 5 ms, 9,500 at 1 ms, the loop no slower).
GIL_SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


async def serve(config: Config, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    if not config.tls and not is_loopback(config.host):
        raise SystemExit("plain HTTP (--insecure-http) is only allowed on a loopback address")
    # asyncio gives every TLS connection a 256 KiB read buffer (Python 3.11). The listener's TLS is
    # central/tlsconn.py's now; this still bounds TLS connections the server itself opens on asyncio's loop.
    asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER
    app = create_app(config)
    limits = fit_to_fd_limit(config.connections)
    # keepalive_timeout: aiohttp closes a kept-alive connection idle this long (the head timeout
    # and the connection limits are ConnectionGuard's).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                           keepalive_timeout=limits.idle_timeout)
    await runner.setup()
    assert runner.server is not None
    MalformedRequestLog.install()
    services = app[SERVICES]
    ssl_ctx = services.ca.server_ssl_context(config.cert_hosts(), config.replica) if config.tls else None
    site = GuardedSite(runner, config.host, config.port, ssl_context=ssl_ctx, backlog=4096,
                       guard=ConnectionGuard(limits, services.connections), upgrade=app[NODE_DOOR],
                       proxy_from=Balancers(config.proxy_protocol_from))
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if config.tls else "http"
    dial = config.host if config.host not in ("0.0.0.0", "::") else (config.public_hosts or config.cert_hosts())[0]
    services.base_url = f"{scheme}://{_url_host(dial)}:{port}"
    info = {"url": services.base_url, "pid": os.getpid(), "tls": config.tls, "version": __version__}
    # A stop asked for from now on is a clean one: it takes back the listen files written next.
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(announce, config.data_dir, config.replica, info)
    log.info("dvic-central %s listening on %s (data dir %s)", __version__, services.base_url, config.data_dir)
    token_file = config.data_dir / ADMIN_TOKEN_FILE
    print(f"dvic-central listening on {services.base_url}", flush=True)
    print(f"  CA to pin:   {services.ca.cert_path}  (sha256 {services.ca.fingerprint})", flush=True)
    print(f"  admin token: {token_file}", flush=True)
    tune_interpreter()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(withdraw, config.data_dir, config.replica, info)
        await runner.cleanup()


async def _enroll_offline(config: Config, server_url: str, name: str, kind: str, group: str) -> dict[str, Any]:
    services = await open_services(config)
    try:
        services.base_url = server_url
        return await enroll_node(services, name, kind, group)
    finally:
        await close_services(services)


def cmd_node_add(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).expanduser()
    info = running_server(data_dir)
    if info is not None:
        bundle = admin_call(data_dir, info, calls.enroll(args.name, args.kind, args.group))
    else:
        url = args.server_url
        if not url:
            raise SystemExit("the server is not running: start it, or give --server-url for an offline enrollment")
        try:
            bundle = asyncio.run(_enroll_offline(build_config(args), url.rstrip("/"), args.name, args.kind,
                                                 args.group))
        except ApiError as exc:
            raise SystemExit(f"error: {exc.message}") from None
        except DatabaseUnavailable as exc:
            raise SystemExit(f"dvic-central: {exc}") from None
    out = Path(args.out)
    write_private(out, (json.dumps(bundle, indent=2) + "\n").encode())
    print(f"enrolled {bundle['name']} ({bundle['node_id']}); bundle written to {out} (mode 0600, keep it secret)")
    return 0


def cmd_node_remove(args: argparse.Namespace) -> int:
    node = call_running(Path(args.data_dir).expanduser(), calls.revoke_node(args.node),
                        "the server is not running: start it first (revocation must reach live connections)")
    print(f"revoked {node['name']} ({node['id']})")
    return 0


def cmd_node_list(args: argparse.Namespace) -> int:
    nodes = call_running(Path(args.data_dir).expanduser(), calls.nodes(), "the server is not running")
    for n in nodes:
        print(f"{n['name']:<24} {n['id']}  {n['kind']:<10} {n['group'] or '-':<12} {n['state']}")
    return 0


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the server on uvloop when it is installed (DVIC_EVENT_LOOP=asyncio: the standard loop).

    At 2,000 nodes uvloop saved about a tenth of the event loop's time (its TLS transport then; TLS
    is central/tlsconn.py's now, on either loop: docs/performance.md); everything else behaves the same.
    """
    if os.environ.get("DVIC_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        run_event_loop(serve(build_config(args)))
    except DatabaseUnavailable as exc:
        raise SystemExit(f"dvic-central: {exc}") from None
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .devstack import run_local_stack

    return run_local_stack(Path(args.data_dir).expanduser(), args.listen, console=not args.no_console,
                           server_url=args.server_url or "")


def cmd_migrate(args: argparse.Namespace) -> int:
    from .transfer import run

    source = args.source or Path(args.data_dir).expanduser() / DB_FILE
    return run(source, args.destination)


def _sqlite_source(value: str) -> Path:
    found = _typed_target(value)
    if found.path is None:
        raise argparse.ArgumentTypeError(f"give the SQLite database as sqlite:PATH, not {found.masked}")
    return found.path


def _postgresql_target(value: str) -> str:
    found = _typed_target(value)
    if found.dialect != "postgresql":
        raise argparse.ArgumentTypeError("give the target as postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    return found.url


def _typed_target(value: str) -> Target:
    try:
        return target(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replica_name(value: str) -> str:
    if not value:  # the default (argparse passes a string default through here too): the host's name
        return ""
    try:
        return check_replica_name(value)
    except ReplicaNameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _database(value: str) -> str:
    if value:  # (empty: the SQLite file in the data dir)
        _typed_target(value)
    return value


@dataclass(frozen=True)
class Setting:
    """A `serve` option that sets one Config field (`field`), or one field of a Config part (`part.field`).

    The default is the field's; its parser follows from the field's type (a whole number >= 1, a
    positive number of seconds) unless `parse` names another, and the metavar from the parser;
    "{default}" in `help` shows the default as the option takes it (32M, 2G, 0.5).
    """

    flag: str
    field: str
    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, p: argparse.ArgumentParser) -> None:
        part, _, name = self.field.rpartition(".")
        owner = PARTS[part] if part else Config
        default = getattr(owner, name)  # a dataclass field's default is its class attribute
        parse = self.parse or _PARSERS[_field_types(owner)[name]]
        p.add_argument(self.flag, type=parse, default=default, metavar=self.metavar or _METAVARS[parse],
                       help=self.help.format(default=_shown(default, parse)))


def _shown(default: Any, parse: Callable[[str], Any]) -> str:
    """A default as its option takes it: 32M, 2G, 0.5, UTC."""
    if parse is _byte_size:
        return _size_text(default)
    return f"{default:g}" if parse is _positive_seconds else str(default)


PARTS: dict[str, type] = {"notify": Notify, "demos": DemoLimits, "connections": ConnectionLimits}
SETTINGS = (
    Setting("--max-client-queue", "max_client_queue",
            "live-stream frames queued for one client before it is cut off as too slow (default {default})",
            metavar="FRAMES"),
    Setting("--register-per-address", "register_per_address",
            "with --self-register: attempts per hour from one address (default {default})"),
    Setting("--register-total", "register_total",
            "with --self-register: new accounts per hour in total (default {default})"),
    Setting("--max-demos", "max_demos",
            "demos kept per node; past it an exited one makes room, a new one is refused when all run"
            " (default {default})"),
    Setting("--forget-demos-after", "forget_demos_after",
            "seconds after its exit a demo is forgotten (default {default}: the daemon re-announces the exits"
            " of the last 24 h)"),
    Setting("--max-client-bytes", "max_client_bytes",
            "live-stream bytes queued for one client before it is cut off as too slow, e.g. 64M"
            " (default {default})", parse=_byte_size),
    Setting("--alerts-interval", "alerts_interval",
            "seconds between alert evaluation passes over every node; events (a node going offline, a demo"
            " crash-looping) are evaluated at once (default {default})"),
    Setting("--alerts-reminder", "alerts_reminder",
            "seconds between reminders of an alert still firing unacknowledged (default {default})"),
    Setting("--max-release-bytes", "demos.max_release_bytes",
            "largest demo release archive accepted, e.g. 500M (default {default})", parse=_byte_size),
    Setting("--max-release-unpacked", "demos.max_unpacked_bytes",
            "file bytes a demo release may unpack to, checked at publish and on nodes (default {default})",
            parse=_byte_size),
    Setting("--max-release-members", "demos.max_members",
            "members a demo release archive may hold (default {default})"),
    Setting("--keep-releases", "demos.keep_releases",
            "unreferenced releases kept per demo, the newest first (default {default})"),
    Setting("--demo-install-timeout", "demos.install_timeout",
            "seconds an install may stay in one state without news before it is lost (default {default};"
            " starting adds the release's start_timeout_s)"),
    Setting("--calendar-zone", "calendar_zone",
            "IANA time zone of a group until its hours name one (default {default})", parse=_zone_name),
    Setting("--calendar-grace", "calendar_grace",
            "a runbook moment missed while the server was down fires at start-up if at most this late, else"
            " it is recorded as missed (default {default})"),
    Setting("--calendar-tick", "calendar_tick",
            "the scheduler's longest sleep: how soon a wall-clock jump is noticed (default {default})"),
    Setting("--header-timeout", "connections.head_timeout",
            "seconds for the TLS handshake, then for the first request's head, before a connection is dropped"
            " (default {default})"),
    Setting("--idle-timeout", "connections.idle_timeout",
            "seconds a kept-alive connection may wait for its next request (default {default})"),
    Setting("--max-connections", "connections.max_connections",
            "open connections in all (default {default}; the open-file limit must allow it, see"
            " docs/operations.md)"),
    Setting("--max-connections-per-address", "connections.max_per_address",
            "open connections from one client address, not counting nodes (default {default})"),
    # Notification delivery (docs/operations.md "Notifications").
    Setting("--notify-group-window", "notify.group_window",
            "notices on one route starting within S seconds go out as one message (default {default})"),
    Setting("--notify-group-quiet", "notify.group_quiet",
            "a group goes out once nothing joined it for S seconds (default {default})"),
    Setting("--notify-max-lines", "notify.max_lines",
            "subjects a message lists before 'and K more' (default {default})"),
    Setting("--notify-attempts", "notify.attempts",
            "tries per message before it is kept as failed (default {default})"),
    Setting("--notify-backoff", "notify.backoff",
            f"wait before the first retry, doubled at each (at most {Notify.backoff_max:g} s; default {{default}})"),
    Setting("--notify-timeout", "notify.timeout",
            "seconds a receiver has to answer one attempt (default {default})"),
    Setting("--notify-per-channel", "notify.per_channel",
            "attempts in flight at once for one channel (default {default})"),
)
_PARSERS: dict[str, Callable[[str], Any]] = {"int": _at_least_one, "float": _positive_seconds}
_METAVARS: dict[Callable[[str], Any], str] = {_at_least_one: "N", _positive_seconds: "S", _byte_size: "SIZE",
                                              _zone_name: "ZONE"}


def _field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(cls)}


def _size_text(size: int) -> str:
    """A byte size as _byte_size reads it, in the largest unit that divides it: 33554432 -> 32M."""
    unit = next(u for u in ("G", "M", "K", "") if size % _SIZE_UNITS[u] == 0)
    return f"{size // _SIZE_UNITS[unit]}{unit}"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Config's keyword arguments from the SETTINGS options (a part's fields as that part)."""
    top: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        part, _, name = s.field.rpartition(".")
        (parts.setdefault(part, {}) if part else top)[name] = getattr(args, s.dest)
    return top | {part: PARTS[part](**values) for part, values in parts.items()}


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", type=_database, default=os.environ.get("DVIC_DATABASE", ""), metavar="URL",
                   help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, or sqlite:PATH (default: the SQLite file"
                        " in the data dir; env DVIC_DATABASE)")
    p.add_argument("--replica", type=_replica_name, default=os.environ.get("DVIC_REPLICA", ""), metavar="NAME",
                   help="this server's name among replicas sharing one PostgreSQL (default: the host's name;"
                        " env DVIC_REPLICA)")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8443), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8443; port 0 picks a free one)")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP (development only, loopback only)")
    p.add_argument("--public-host", action="append", metavar="NAME",
                   help="extra DNS name or IP for the server certificate (repeatable)")
    p.add_argument("--public-url", help="base URL written into bundles (default: the listen address)")
    p.add_argument("--interval", type=_positive_seconds, default=5.0, help="metrics/keep-alive interval in seconds")
    p.add_argument("--offline-after", type=_positive_seconds, default=15.0, help="seconds of silence before offline")
    p.add_argument("--tunnel-port", type=int, action="append", metavar="PORT",
                   help="TCP port a tunnel through a node may reach (repeatable; default 22)")
    p.add_argument("--self-register", action="store_true",
                   help="let people ask for an account (POST /api/v1/register); off by default")
    p.add_argument("--access-log", choices=ACCESS_LOG_MODES, default=Config.access_log,
                   help="one log line per request: on (node keep-alives summed up per minute; the default),"
                        " all, or off")
    p.add_argument("--metrics-allow", type=_network, action="append", metavar="CIDR",
                   help="a client network that may read GET /metrics without a token, e.g. the Prometheus"
                        " server's 10.0.0.5/32 (repeatable; otherwise a viewer's token is needed)")
    p.add_argument("--proxy-protocol-from", type=_proxy_sources, metavar="ADDR[,ADDR|CIDR...]",
                   default=os.environ.get("DVIC_PROXY_PROTOCOL_FROM", ""),
                   help="the load balancers' addresses: each connection from them must start with a PROXY"
                        " protocol v2 header naming the client (HAProxy's send-proxy-v2); no other address"
                        " may send one (env DVIC_PROXY_PROTOCOL_FROM)")
    for setting in SETTINGS:
        setting.add_to(p)
    p.add_argument("--max-booking-days", type=_positive_seconds, default=Config.max_booking / 86400, metavar="D",
                   help=f"longest booking, in days (default {Config.max_booking / 86400:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dvic-central", description="DVIC Demo Monitor central server")
    parser.add_argument("--version", action="version", version=f"dvic-central {__version__}")
    parser.add_argument("--data-dir", default=os.environ.get("DVIC_DATA_DIR", DEFAULT_DATA_DIR),
                        help=f"where the database, CA and tokens live (default {DEFAULT_DATA_DIR})")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("serve", help="run the server (the default command)")
    _add_server_options(p)
    p.set_defaults(func=cmd_serve)

    node = sub.add_parser("node", help="enroll, revoke and list nodes").add_subparsers(dest="node_command",
                                                                                       required=True)
    p = node.add_parser("add", help="enroll a node and write its bundle")
    p.add_argument("name")
    p.add_argument("--kind", default="desktop", choices=NODE_KINDS)
    p.add_argument("--group", default="")
    p.add_argument("--out", required=True, help="bundle file to write (0600)")
    p.add_argument("--server-url", help="server URL for the bundle when enrolling with the server stopped")
    _add_server_options(p)
    p.set_defaults(func=cmd_node_add)
    p = node.add_parser("remove", help="revoke a node (its connection is closed, reconnection refused)")
    p.add_argument("node", help="name or UUID")
    p.set_defaults(func=cmd_node_remove)
    p = node.add_parser("list", help="list nodes")
    p.set_defaults(func=cmd_node_list)

    p = sub.add_parser("migrate", help="move this installation's SQLite database to PostgreSQL",
                       description="Copy every table of an SQLite database into an empty PostgreSQL database, in"
                                   " one transaction (docs/operations.md, Outgrowing one server).")
    p.add_argument("--from", dest="source", metavar="sqlite:PATH", type=_sqlite_source,
                   help="the SQLite database (default: dvic.sqlite3 in the data dir)")
    p.add_argument("--to", dest="destination", metavar="postgresql://...", type=_postgresql_target, required=True,
                   help="the PostgreSQL database, empty (made with the server's schema if it has none)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("up", help="quick start: server + this machine's daemon + console")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8443), metavar="HOST:PORT")
    p.add_argument("--no-console", action="store_true", help="keep running without opening the console")
    p.add_argument("--server-url", type=_https_url, metavar="URL",
                   help="start no server: use the one at URL, e.g. the load balancer in front of replicas"
                        " (the data dir's admin token and ca.pem are used), and point this machine's daemon"
                        " and console at it")
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = {"serve", "node", "migrate", "up", "-h", "--help", "--version"}
    # `dvic-central --data-dir D --listen H:P` (no sub-command) means serve.
    if not any(a in known for a in argv):
        argv = [*_globals(argv), "serve", *_rest(argv)]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def _globals(argv: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--data-dir":
            out += [a, next(it, "")]
        elif a.startswith("--data-dir=") or a in ("-v", "--verbose"):
            out.append(a)
    return out


def _rest(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--data-dir":
            skip = True
            continue
        if a.startswith("--data-dir=") or a in ("-v", "--verbose"):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
