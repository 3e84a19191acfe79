"""Everything a request handler needs, opened and closed with the application (aiohttp cleanup_ctx)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

import node_script
from dvic_core.files import write_private

from . import db, store
from .actions import ActionHub
from .alerts.dispatcher import Dispatcher
from .alerts.engine import AlertEngine
from .bus import Bus
from .calendar.service import Calendar, CalendarSettings
from .cluster.attempts import SharedAttempts
from .cluster.conns import SharedConnections
from .cluster.fanout import SharedBus
from .cluster.features import JOB as FEATURES_JOB
from .cluster.features import Features
from .cluster.leader import Leadership, Solo
from .cluster.presence import Presence
from .cluster.replica import Cluster, default_replica_name, open_cluster
from .cluster.routing import Router, ServiceHubs, wire
from .commands import CommandHub
from .config import Config, Retention
from .datadir import data_dir_lock_async
from .dbconn import PgReadDB, ReadDB, Target, target
from .demos.archive import Limits as ArchiveLimits
from .demos.calendar_port import CalendarDeployments
from .demos.catalog import Catalog
from .demos.deployments import DeploymentHub
from .pki import CertificateAuthority
from .queries import Queries
from .registry import Registry
from .release import ReleaseStore
from .shells import ShellHub
from .tokens import hash_token, new_token
from .tunnels import TunnelHub
from .writer import Writer

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"
SHIPPED_DAEMON = node_script.DAEMON


@dataclass
class Services:
    config: Config
    ca: CertificateAuthority
    writer: Writer
    read_db: ReadDB
    queries: Queries
    registry: Registry
    bus: Bus
    commands: CommandHub
    shells: ShellHub
    tunnels: TunnelHub
    actions: ActionHub
    release: ReleaseStore
    alerts: AlertEngine
    # The alert engine's NoticeSink: routes, groups and delivers notifications (started by services_ctx).
    notices: Dispatcher
    catalog: Catalog
    deployments: DeploymentHub
    calendar: Calendar
    # This replica's name and the bus to the other replicas (a local one on SQLite).
    cluster: Cluster
    # Who holds which node's session, shared with the other replicas (central/cluster/presence.py).
    presence: Presence
    # The jobs that run once among replicas (Leadership on PostgreSQL, Solo on SQLite): started by services_ctx.
    jobs: Leadership | Solo | None = None
    # With replicas: the brute-force budgets counted with the others (cluster/attempts.py), and the
    # per-address connection counts (cluster/conns.py); None on SQLite.
    attempts: SharedAttempts | None = None
    connections: SharedConnections | None = None
    started_at: float = field(default_factory=time.time)
    # Set by the listener once bound; used for bundle URLs when no public_url is configured.
    base_url: str = ""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # The hubs' way to a node on another replica (central/cluster/routing.py).
    router: Router = field(init=False)
    # Where the feature areas live with several replicas: the features leader (cluster/features.py).
    features: Features = field(init=False)

    def public_url(self) -> str:
        return (self.config.public_url or self.base_url).rstrip("/")


SERVICES = web.AppKey("services", Services)


async def open_services(config: Config) -> Services:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.data_dir, 0o700)
    ca = CertificateAuthority(config.data_dir)
    where = database_target(config)
    log.info("database: %s", where.masked)
    await db.prepare(where)
    writer = Writer(where, config.commit_interval)
    await writer.start()
    await writer.submit(store.prepare_partitions(time.time()))  # PostgreSQL: today's and the next days'
    try:
        read_db = await db.open_reads(where)
    except BaseException:
        await writer.close()
        raise
    queries = Queries(read_db)
    cluster = open_cluster(config.replica or default_replica_name(),
                           where.url if where.dialect == "postgresql" else None)
    # The local fan-out to operator clients; with replicas, also to theirs (cluster/fanout.py).
    bus = SharedBus(config.max_client_queue, client_byte_budget=config.max_client_bytes)
    registry = Registry(writer, bus, config.offline_after, config.interval,
                        max_demos=config.max_demos, forget_demos_after=config.forget_demos_after)
    registry.load(await queries.nodes(), await queries.demos())
    release = ReleaseStore(config.data_dir)
    # The engine's notices go to the notification dispatcher (routes, grouping, the delivery queue).
    notices = Dispatcher(writer, read_db, config.notify)
    alerts = AlertEngine(writer, registry, bus, interval=config.alerts_interval, reminder_s=config.alerts_reminder,
                         history_s=config.retention.events_s, release=lambda: _release_version(release),
                         sink=notices)
    commands, actions = CommandHub(writer), ActionHub(writer, registry)
    calendar = Calendar(writer, read_db, registry, actions, commands, CalendarSettings(
        config.calendar_zone, config.calendar_grace, config.calendar_tick, config.max_booking,
        config.retention.events_s))
    alerts.quiet = calendar.quiet  # outside opening hours, non-critical notices are held back
    catalog, deployments = await open_demos(config, writer, read_db, registry, start=not cluster.shared)
    calendar.use_deployments(CalendarDeployments(deployments, catalog))  # runbook deploy steps, --deploy bookings
    presence = Presence(cluster, registry, bus, writer, queries)
    services = Services(config, ca, writer, read_db, queries, registry, bus, commands,
                        ShellHub(writer, config.data_dir / "recordings"), TunnelHub(),
                        actions, release, alerts, notices, catalog, deployments, calendar, cluster, presence)
    # The daemon shipped beside this server becomes the release nodes update to (when newer).
    services.release.ensure_published(SHIPPED_DAEMON)
    services.router = wire(cluster.bus, registry.get, ServiceHubs(commands, services.shells, services.tunnels, actions),
                           presence.peers)
    deployments.deliver = services.router.deliver  # demos_desired to a node wherever its session is
    services.features = Features(services)
    if cluster.shared:
        assert isinstance(read_db, PgReadDB)
        services.attempts = SharedAttempts(read_db.pool, where.url)
        services.connections = SharedConnections(cluster.bus, presence)
    await ensure_admin(services)
    await writer.submit(store.lose_unfinished_runs(time.time()))
    await writer.submit(store.lose_unfinished_actions(time.time()))
    await alerts.load(read_db)
    registry.event_observers.append(alerts.on_event)
    await calendar.open(jobs=not cluster.shared)  # with replicas, the leader's job (once_only_jobs)
    return services


def database_target(config: Config) -> Target:
    """The database of this server: --database, else the SQLite file in the data dir."""
    return target(config.database) if config.database else target(config.data_dir / db.DB_FILE)


def _release_version(release: ReleaseStore) -> str | None:
    current = release.current()
    return current.version if current is not None else None


async def open_demos(config: Config, writer: Writer, read_db: ReadDB, registry: Registry,
                     *, start: bool = True) -> tuple[Catalog, DeploymentHub]:
    """The release catalog and the deployments, loaded from the database (central/demos/); `start`:
    follow the rollouts now (with replicas the features leader does, once it leads)."""
    d = config.demos
    limits = ArchiveLimits(d.max_unpacked_bytes, d.max_members)
    catalog = Catalog(config.data_dir, writer.submit, limits, d.max_release_bytes, d.keep_releases)
    hub = DeploymentHub(writer.submit, writer.submit_later, registry, catalog, limits, d.install_timeout)
    await hub.read(read_db)
    if start:
        hub.start()
    return catalog, hub


async def close_services(services: Services) -> None:
    if services.jobs is not None:
        await services.jobs.close()
    await services.presence.stop()
    await services.features.close()
    await services.calendar.close()
    for task in services.tasks:
        task.cancel()
    for task in services.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await services.notices.close()
    await services.router.close()
    if services.attempts is not None:
        await services.attempts.close()
    if services.connections is not None:
        await services.connections.close()
    await services.cluster.bus.close()
    await services.writer.close()
    await services.read_db.close()


async def ensure_admin(services: Services) -> str | None:
    """First start: create the `admin` operator and its token file (0600). Returns the new token.
    Under the data dir's lock: of replicas starting at once on it, one creates them."""
    async with data_dir_lock_async(services.config.data_dir):
        if await services.queries.operator("admin") is not None:
            return None
        token = new_token()
        now = time.time()
        await services.writer.submit(store.create_operator("admin", "admin", "active", now, approved_by="setup"))
        await services.writer.submit(store.add_token(hash_token(token), "admin", now, label="first start"))
        write_private(services.config.data_dir / ADMIN_TOKEN_FILE, (token + "\n").encode())
    log.warning("first start: admin token written to %s (mode 0600)", services.config.data_dir / ADMIN_TOKEN_FILE)
    return token


async def _sweeper(services: Services) -> None:
    """Presence sweep once a second: of every node, or with replicas of the nodes whose session this
    one holds (the others': their replica's, or the leader's orphan sweep)."""
    owns = services.presence.holds if services.cluster.shared else None
    while True:
        await asyncio.sleep(1.0)
        try:
            await services.registry.sweep(owns=owns)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweeper must outlive a transient storage error
            log.exception("presence sweep failed")


# A retention pass starts once a minute, or at once when the last one could not finish within a
# minute. Each commit spends about RETENTION_SLICE_S deleting (an operator's urgent write waits at
# most that long more). For the first RETENTION_POLITE_S of a pass each slice is followed by a
# pause as long, so other writes have the writer to themselves half the time; a pass still running
# then has a backlog, and goes on without pauses (other writes still ride along in every commit):
# beside 10,000 lines/s of ingest, 19,000-26,000 log lines/s deleted instead of 14,000-16,000
# (docs/performance.md, "Retention").
RETENTION_EVERY_S = 60.0
RETENTION_SLICE_S = 0.025
RETENTION_POLITE_S = 30.0


async def _retention(services: Services) -> None:
    behind = False
    while True:
        started = time.monotonic()
        try:
            trimmed = await trim_expired(services.writer, services.config.retention, time.time())
        except asyncio.CancelledError:
            raise
        except Exception:  # the task must outlive a transient storage error
            log.exception("retention pass failed")
        else:
            if any(trimmed.values()):
                log.info("retention deleted %s", dict(trimmed))
            behind = await say_if_behind(services.registry, behind, trimmed)
        await asyncio.sleep(max(1.0, RETENTION_EVERY_S - (time.monotonic() - started)))


async def trim_expired(writer: Writer, retention: Retention, now: float, *, slice_s: float = RETENTION_SLICE_S,
                       polite_s: float = RETENTION_POLITE_S, max_pass_s: float = RETENTION_EVERY_S) -> store.Trimmed:
    """One retention pass: delete everything expired as of `now`, one time slice per commit.

    For its first `polite_s` the pass waits as long as each slice took before the next, so node
    batches, metrics and operators' writes have the writer to themselves half the time; after
    that it catches up without pauses. A pass that has not finished after `max_pass_s` returns
    with `done` False: retention is behind.
    """
    r = retention
    totals = store.Trimmed()
    started = time.monotonic()
    deadline = started + max_pass_s
    while True:
        trimmed = await writer.submit(store.apply_retention(
            now, r.raw_metrics_s, r.metrics_1m_s, r.logs_s, r.logs_max_rows, r.events_s, r.audit_s,
            time_budget=slice_s,
        ))
        for table, count in trimmed.items():
            totals[table] = totals.get(table, 0) + count
        totals.seconds += trimmed.seconds
        totals.done = trimmed.done
        now_mono = time.monotonic()
        if trimmed.done or now_mono >= deadline:
            return totals
        await asyncio.sleep(min(trimmed.seconds, 1.0) if now_mono - started < polite_s else 0)


async def say_if_behind(registry: Registry, behind: bool, trimmed: store.Trimmed) -> bool:
    """Warn (log, and a server event when it starts or ends) while passes cannot finish: rows then
    expire faster than they are deleted and the database grows. Returns whether it is behind."""
    now_behind = not trimmed.done
    if now_behind:
        log.warning("retention is behind: %d rows deleted in a %.0f s pass, expired rows remain",
                    sum(trimmed.values()), RETENTION_EVERY_S)
    if now_behind != behind:
        message = "retention is behind: expired rows remain after a full pass" if now_behind \
            else "retention caught up"
        try:
            await registry.record_event(None, "retention", message,
                                        {"behind": now_behind, "deleted": sum(trimmed.values())})
        except Exception:  # a warning that cannot be stored is still in the log
            log.exception("could not record the retention event")
    return now_behind


# PostgreSQL: how often the logs' text index takes the words waiting in its pending list (db.merge_log_words).
LOG_WORDS_MERGE_EVERY_S = 1.0


async def _merge_log_words(services: Services) -> None:
    """Merge the words of new log lines into PostgreSQL's text index, in bulk, off the writer's
    path (schema step 14). A failure is said once, not every second; the writer merges by itself
    when the pending list reaches its limit, so nothing waits on this job."""
    failing = False
    while True:
        await asyncio.sleep(LOG_WORDS_MERGE_EVERY_S)
        try:
            await db.merge_log_words(services.read_db)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job must outlive a transient storage error
            if not failing:
                log.warning("merging the log text index's pending words failed (retrying every %.0f s): %s",
                            LOG_WORDS_MERGE_EVERY_S, exc)
            failing = True
        else:
            if failing:
                log.info("merging the log text index's pending words works again")
            failing = False


def once_only_jobs(services: Services) -> Leadership | Solo:
    """The jobs that must run once among replicas: on PostgreSQL each on the replica holding its
    advisory lock (cluster/leader.py): retention, the sweep of nodes no replica holds, merging the
    logs' text index (PostgreSQL's own), and the feature areas (alert evaluation, notification
    delivery, the calendar's jobs, rollouts: the features leader, cluster/features.py); on SQLite
    all here, as they always did."""
    jobs = {"retention": lambda: _retention(services)}
    cluster = services.cluster
    if not cluster.shared:
        return Solo(jobs | {"alerts": services.alerts.run})
    jobs |= {"offline": services.presence.sweep_orphans, FEATURES_JOB: services.features.lead,
             "log-words": lambda: _merge_log_words(services)}
    return Leadership(database_target(services.config).url, cluster.replica, jobs)


async def stop_presence(app: web.Application) -> None:
    """aiohttp's on_shutdown, before the node sockets close: a replica stopping cleanly says so, so
    that its nodes are not turned offline as their sessions end (they reconnect elsewhere)."""
    services = app.get(SERVICES)
    if services is not None and services.cluster.shared:
        await services.presence.stop()


def services_ctx(config: Config) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(config)
        try:
            await services.cluster.bus.start()
        except BaseException:
            await close_services(services)
            raise
        log.info("replica %s (%s)", services.cluster.replica,
                 "sharing PostgreSQL with any others" if services.cluster.shared else "the only server")
        if services.cluster.shared:
            try:
                await services.presence.start()
            except BaseException:
                await close_services(services)
                raise
        if not services.cluster.shared:  # (with replicas: by the features leader, once it leads)
            # What a stop or a crash left queued is sent now.
            await services.notices.start()
        services.tasks.append(asyncio.create_task(_sweeper(services), name="dvic-sweeper"))
        services.jobs = once_only_jobs(services)
        services.jobs.start()
        app[SERVICES] = services
        yield
        await close_services(services)

    return ctx
