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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from dvic_core.constants import NODE_KINDS
from tui.api import calls

from . import __version__
from .accesslog import MODES as ACCESS_LOG_MODES
from .app import create_app
from .auth import ApiError
from .config import Config, ConnectionLimits, DemoLimits, Notify, is_loopback
from .db import DB_FILE
from .dbconn import DatabaseUnavailable, Target, target
from .enroll import enroll_node
from .listener import ConnectionGuard, GuardedSite, MalformedRequestLog, fit_to_fd_limit
from .local import LISTEN_FILE, admin_call, call_running, running_server
from .pki import write_private
from .services import ADMIN_TOKEN_FILE, SERVICES, close_services, open_services

SSL_READ_BUFFER = 16 * 1024
DEFAULT_DATA_DIR = "~/.local/share/dvic-central"
T = TypeVar("T")
log = logging.getLogger("dvic-central")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_config(args: argparse.Namespace) -> Config:
    host, port = args.listen
    return Config(
        data_dir=Path(args.data_dir).expanduser(), database=args.database, host=host, port=port, tls=not args.insecure_http,
        public_hosts=tuple(args.public_host or ()), public_url=args.public_url or "",
        interval=args.interval, offline_after=args.offline_after,
        tunnel_ports=tuple(args.tunnel_port or (22,)),
        max_client_queue=args.max_client_queue, max_client_bytes=args.max_client_bytes,
        self_register=args.self_register, register_per_address=args.register_per_address,
        register_total=args.register_total, access_log=args.access_log,
        max_demos=args.max_demos, forget_demos_after=args.forget_demos_after,
        alerts_interval=args.alerts_interval, alerts_reminder=args.alerts_reminder,
        metrics_allow=tuple(args.metrics_allow or ()),
        notify=Notify(
            group_window=args.notify_group_window, group_quiet=args.notify_group_quiet,
            max_lines=args.notify_max_lines, attempts=args.notify_attempts, backoff=args.notify_backoff,
            timeout=args.notify_timeout, per_channel=args.notify_per_channel,
        ),
        demos=DemoLimits(max_release_bytes=args.max_release_bytes, max_unpacked_bytes=args.max_release_unpacked,
                         max_members=args.max_release_members, keep_releases=args.keep_releases,
                         install_timeout=args.demo_install_timeout),
        calendar_zone=args.calendar_zone, calendar_grace=args.calendar_grace, calendar_tick=args.calendar_tick,
        max_booking=args.max_booking_days * 86400,
        connections=ConnectionLimits(
            head_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
            max_connections=args.max_connections, max_per_address=args.max_connections_per_address,
        ),
    )


def _zone_name(text: str) -> str:
    from .calendar.hours import HoursError, zone

    try:
        zone(text)
    except HoursError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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
    # asyncio gives every TLS connection a 256 KiB read buffer (Python 3.11): 2,000 idle nodes
    # cost 630 MB. Node frames are small; 16 KiB keeps them at about 200 MB (bench/fleet.py).
    asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER
    app = create_app(config)
    limits = fit_to_fd_limit(config.connections)
    # keepalive_timeout: aiohttp closes a kept-alive connection idle this long (the head timeout
    # and the connection limits are ConnectionGuard's).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                           keepalive_timeout=limits.idle_timeout)
    await runner.setup()
    assert runner.server is not None
    ConnectionGuard.install(runner.server, limits)
    MalformedRequestLog.install()
    services = app[SERVICES]
    ssl_ctx = services.ca.server_ssl_context(config.cert_hosts()) if config.tls else None
    site = GuardedSite(runner, config.host, config.port, ssl_context=ssl_ctx, backlog=4096,
                       handshake_timeout=limits.head_timeout)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if config.tls else "http"
    dial = config.host if config.host not in ("0.0.0.0", "::") else (config.public_hosts or config.cert_hosts())[0]
    services.base_url = f"{scheme}://{_url_host(dial)}:{port}"
    info = {"url": services.base_url, "pid": os.getpid(), "tls": config.tls, "version": __version__}
    (config.data_dir / LISTEN_FILE).write_text(json.dumps(info) + "\n")
    log.info("dvic-central %s listening on %s (data dir %s)", __version__, services.base_url, config.data_dir)
    token_file = config.data_dir / ADMIN_TOKEN_FILE
    print(f"dvic-central listening on {services.base_url}", flush=True)
    print(f"  CA to pin:   {services.ca.cert_path}  (sha256 {services.ca.fingerprint})", flush=True)
    print(f"  admin token: {token_file}", flush=True)
    tune_interpreter()
    if ready is not None:
        ready.set()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            (config.data_dir / LISTEN_FILE).unlink()
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

    At 2,000 nodes uvloop's TLS transport saves about a tenth of the event loop's time
    (docs/performance.md); everything else behaves the same on either loop.
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

    return run_local_stack(Path(args.data_dir).expanduser(), args.listen, console=not args.no_console)


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


def _database(value: str) -> str:
    if not value:
        return value  # the SQLite file in the data dir
    try:
        target(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", type=_database, default=os.environ.get("DVIC_DATABASE", ""), metavar="URL",
                   help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, or sqlite:PATH (default: the SQLite file"
                        " in the data dir; env DVIC_DATABASE)")
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
    p.add_argument("--max-client-queue", type=_at_least_one, default=Config.max_client_queue, metavar="FRAMES",
                   help=f"live-stream frames queued for one client before it is cut off as too slow"
                        f" (default {Config.max_client_queue})")
    p.add_argument("--self-register", action="store_true",
                   help="let people ask for an account (POST /api/v1/register); off by default")
    p.add_argument("--register-per-address", type=_at_least_one, default=Config.register_per_address, metavar="N",
                   help=f"with --self-register: attempts per hour from one address (default"
                        f" {Config.register_per_address})")
    p.add_argument("--register-total", type=_at_least_one, default=Config.register_total, metavar="N",
                   help=f"with --self-register: new accounts per hour in total (default {Config.register_total})")
    p.add_argument("--access-log", choices=ACCESS_LOG_MODES, default=Config.access_log,
                   help="one log line per request: on (node keep-alives summed up per minute; the default),"
                        " all, or off")
    p.add_argument("--max-demos", type=_at_least_one, default=Config.max_demos, metavar="N",
                   help=f"demos kept per node; past it an exited one makes room, a new one is refused when all"
                        f" run (default {Config.max_demos})")
    p.add_argument("--forget-demos-after", type=_positive_seconds, default=Config.forget_demos_after, metavar="S",
                   help="seconds after its exit a demo is forgotten (default 86400: the daemon re-announces"
                        " the exits of the last 24 h)")
    p.add_argument("--max-client-bytes", type=_byte_size, default=Config.max_client_bytes, metavar="SIZE",
                   help=f"live-stream bytes queued for one client before it is cut off as too slow, e.g. 64M"
                        f" (default {Config.max_client_bytes >> 20}M)")
    p.add_argument("--alerts-interval", type=_positive_seconds, default=Config.alerts_interval, metavar="S",
                   help=f"seconds between alert evaluation passes over every node; events (a node going"
                        f" offline, a demo crash-looping) are evaluated at once (default {Config.alerts_interval:g})")
    p.add_argument("--alerts-reminder", type=_positive_seconds, default=Config.alerts_reminder, metavar="S",
                   help=f"seconds between reminders of an alert still firing unacknowledged"
                        f" (default {Config.alerts_reminder:g})")
    p.add_argument("--metrics-allow", type=_network, action="append", metavar="CIDR",
                   help="a client network that may read GET /metrics without a token, e.g. the Prometheus"
                        " server's 10.0.0.5/32 (repeatable; otherwise a viewer's token is needed)")
    demos = DemoLimits()
    p.add_argument("--max-release-bytes", type=_byte_size, default=demos.max_release_bytes, metavar="SIZE",
                   help=f"largest demo release archive accepted, e.g. 500M (default {demos.max_release_bytes >> 30}G)")
    p.add_argument("--max-release-unpacked", type=_byte_size, default=demos.max_unpacked_bytes, metavar="SIZE",
                   help=f"file bytes a demo release may unpack to, checked at publish and on nodes"
                        f" (default {demos.max_unpacked_bytes >> 30}G)")
    p.add_argument("--max-release-members", type=_at_least_one, default=demos.max_members, metavar="N",
                   help=f"members a demo release archive may hold (default {demos.max_members})")
    p.add_argument("--keep-releases", type=_at_least_one, default=demos.keep_releases, metavar="N",
                   help=f"unreferenced releases kept per demo, the newest first (default {demos.keep_releases})")
    p.add_argument("--demo-install-timeout", type=_positive_seconds, default=demos.install_timeout, metavar="S",
                   help=f"seconds an install may stay in one state without news before it is lost"
                        f" (default {demos.install_timeout:g}; starting adds the release's start_timeout_s)")
    p.add_argument("--calendar-zone", type=_zone_name, default=Config.calendar_zone, metavar="ZONE",
                   help=f"IANA time zone of a group until its hours name one (default {Config.calendar_zone})")
    p.add_argument("--calendar-grace", type=_positive_seconds, default=Config.calendar_grace, metavar="S",
                   help="a runbook moment missed while the server was down fires at start-up if at most this"
                        f" late, else it is recorded as missed (default {Config.calendar_grace:g})")
    p.add_argument("--calendar-tick", type=_positive_seconds, default=Config.calendar_tick, metavar="S",
                   help=f"the scheduler's longest sleep: how soon a wall-clock jump is noticed"
                        f" (default {Config.calendar_tick:g})")
    p.add_argument("--max-booking-days", type=_positive_seconds, default=Config.max_booking / 86400, metavar="D",
                   help=f"longest booking, in days (default {Config.max_booking / 86400:g})")
    limits = ConnectionLimits()
    p.add_argument("--header-timeout", type=_positive_seconds, default=limits.head_timeout, metavar="S",
                   help=f"seconds for the TLS handshake, then for the first request's head, before a"
                        f" connection is dropped (default {limits.head_timeout:g})")
    p.add_argument("--idle-timeout", type=_positive_seconds, default=limits.idle_timeout, metavar="S",
                   help=f"seconds a kept-alive connection may wait for its next request"
                        f" (default {limits.idle_timeout:g})")
    p.add_argument("--max-connections", type=_at_least_one, default=limits.max_connections, metavar="N",
                   help=f"open connections in all (default {limits.max_connections}; the open-file limit"
                        f" must allow it, see docs/operations.md)")
    p.add_argument("--max-connections-per-address", type=_at_least_one, default=limits.max_per_address,
                   metavar="N", help=f"open connections from one client address, not counting nodes"
                                     f" (default {limits.max_per_address})")
    _add_notify_options(p)


def _add_notify_options(p: argparse.ArgumentParser) -> None:
    """Notification delivery (docs/operations.md "Notifications")."""
    n = Notify()
    p.add_argument("--notify-group-window", type=_positive_seconds, default=n.group_window, metavar="S",
                   help=f"notices on one route starting within S seconds go out as one message"
                        f" (default {n.group_window:g})")
    p.add_argument("--notify-group-quiet", type=_positive_seconds, default=n.group_quiet, metavar="S",
                   help=f"a group goes out once nothing joined it for S seconds (default {n.group_quiet:g})")
    p.add_argument("--notify-max-lines", type=_at_least_one, default=n.max_lines, metavar="N",
                   help=f"subjects a message lists before 'and K more' (default {n.max_lines})")
    p.add_argument("--notify-attempts", type=_at_least_one, default=n.attempts, metavar="N",
                   help=f"tries per message before it is kept as failed (default {n.attempts})")
    p.add_argument("--notify-backoff", type=_positive_seconds, default=n.backoff, metavar="S",
                   help=f"wait before the first retry, doubled at each (at most {n.backoff_max:g} s;"
                        f" default {n.backoff:g})")
    p.add_argument("--notify-timeout", type=_positive_seconds, default=n.timeout, metavar="S",
                   help=f"seconds a receiver has to answer one attempt (default {n.timeout:g})")
    p.add_argument("--notify-per-channel", type=_at_least_one, default=n.per_channel, metavar="N",
                   help=f"attempts in flight at once for one channel (default {n.per_channel})")


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
