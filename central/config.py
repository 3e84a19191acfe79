"""Server settings: one frozen dataclass built from the command line, passed to create_app."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Retention:
    raw_metrics_s: float = 24 * 3600
    metrics_1m_s: float = 30 * 24 * 3600
    logs_s: float = 30 * 24 * 3600
    logs_max_rows: int = 5_000_000
    events_s: float = 90 * 24 * 3600
    audit_s: float = 365 * 24 * 3600


@dataclass(frozen=True)
class ConnectionLimits:
    """What the listener lets in (central/listener.py, docs/operations.md "Connection limits")."""

    # Seconds for the TLS handshake, then again for the first request's head (line and headers).
    head_timeout: float = 10.0
    # Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    # Connections without a node certificate, per client address (IPv6: per /64). Nodes are not
    # counted here: a lab's nodes often share one NAT address.
    max_per_address: int = 512


@dataclass(frozen=True)
class Notify:
    """Notification delivery (central/alerts/dispatcher.py; docs/operations.md "Notifications")."""

    # Notices on the same route that start within `group_window` seconds go out as one message; a
    # group goes out early once nothing joined it for `group_quiet` seconds (one alert alone is
    # not held back for the whole window). 1.5 s: longer than the 1 s between the presence sweeps
    # that notice a hall's nodes going offline one batch at a time (one message for all of them),
    # short enough that a lone alert leaves within the "offline threshold plus 2 s".
    group_window: float = 10.0
    group_quiet: float = 1.5
    # Subject lines a message lists before "and K more".
    max_lines: int = 20
    # Tries per message; the n-th retry waits backoff * 2**(n-1) seconds (at most backoff_max).
    attempts: int = 8
    backoff: float = 2.0
    backoff_max: float = 300.0
    # Seconds a receiver has to answer one attempt.
    timeout: float = 10.0
    # Attempts in flight at once for one channel.
    per_channel: int = 2
    # Sent and failed notifications are kept this long.
    keep_s: float = 30 * 24 * 3600


@dataclass(frozen=True)
class DemoLimits:
    """Demo releases (central/demos/, docs/demos.md): what a release may be, how long installs may stall."""

    max_release_bytes: int = 2 * 1024**3
    # Archive limits checked at publish and sent to nodes, which check them again at unpack.
    max_unpacked_bytes: int = 4 * 1024**3
    max_members: int = 100_000
    # Unreferenced releases kept per demo (the newest by publication).
    keep_releases: int = 5
    # Seconds without news in one install state before it is `lost` (`starting` adds start_timeout_s).
    install_timeout: float = 300.0


@dataclass(frozen=True)
class Config:
    data_dir: Path
    # Where state and history live: "" (or sqlite:PATH) the embedded SQLite file in data_dir, or a
    # PostgreSQL server, postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (docs/operations.md).
    database: str = ""
    # This server's name among replicas sharing one PostgreSQL (central/cluster/replica.py); "" =
    # the host's name.
    replica: str = ""
    host: str = "127.0.0.1"
    port: int = 8443
    tls: bool = True
    # Extra names/addresses to put in the server certificate (what nodes and clients will dial).
    public_hosts: tuple[str, ...] = ()
    # Public base URL written into enrollment bundles; derived from the listener when empty.
    public_url: str = ""
    interval: float = 5.0
    offline_after: float = 15.0
    retention: Retention = field(default_factory=Retention)
    commit_interval: float = 0.01
    max_client_queue: int = 5000
    # Bytes of live-stream frames queued for one client before it is cut off as too slow.
    max_client_bytes: int = 32 * 1024 * 1024
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Ports a tunnel through a node may reach (the installer needs SSH).
    tunnel_ports: tuple[int, ...] = (22,)
    # Self-registration (POST /api/v1/register): off unless asked for; then per hour at most
    # `register_per_address` attempts from one address and `register_total` new accounts, and at
    # most `max_pending` accounts waiting for an admin (docs/security.md).
    self_register: bool = False
    register_per_address: int = 5
    register_total: int = 30
    max_pending: int = 100
    # The access log: "on" (every request; node keep-alives counted per minute), "all", or "off".
    access_log: str = "on"

    # Alerts (docs/alerts.md): seconds between evaluation passes over every node, and between
    # reminders of an alert still firing unacknowledged.
    alerts_interval: float = 10.0
    alerts_reminder: float = 3600.0
    # Client networks that may read GET /metrics without a token (a Prometheus server), as CIDRs.
    metrics_allow: tuple[str, ...] = ()
    # Load balancers' addresses (networks) whose connections start with a PROXY protocol v2 header
    # naming the client (central/proxyproto.py); empty: no header is read from anyone.
    proxy_protocol_from: tuple[str, ...] = ()
    notify: Notify = field(default_factory=Notify)

    # Demos kept per node, and how long an exited one is kept (docs/operations.md).
    max_demos: int = 128
    forget_demos_after: float = 24 * 3600
    demos: DemoLimits = field(default_factory=DemoLimits)

    # The venue calendar (docs/calendar.md): the zone of a group without hours of its own, the
    # grace window for occurrences missed while the server was down, the scheduler's longest
    # sleep (how soon a wall-clock jump is noticed), and the longest booking.
    calendar_zone: str = "UTC"
    calendar_grace: float = 600.0
    calendar_tick: float = 60.0
    max_booking: float = 30 * 86400.0

    def cert_hosts(self) -> list[str]:
        hosts = [self.host, *self.public_hosts]
        if self.host in ("0.0.0.0", "::", ""):
            hosts += _local_names()
        return hosts


def _local_names() -> list[str]:
    """Names and addresses of this machine, for a server that listens on every interface."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(n for n in names if n)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
