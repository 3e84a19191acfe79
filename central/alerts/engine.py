"""The alert engine: evaluates the rules against the registry's live state and runs each alert's
lifecycle (firing -> acknowledged -> resolved), silences, maintenance, quiet hours and reminders.

How it stays cheap (docs/alerts.md, docs/performance.md "Alerts"): every `interval` one pass reads
each node's state in memory (no history query); events (a node going offline, a demo crash-looping)
wake a pass over that node at once; text is built only when an alert starts; everything a pass
changes is written in one commit, together with the notices that tell of it (NoticeSink.persist).
No notice is made while the node is in maintenance, a silence matches or the quiet hook says so: such an alert is
still recorded and shown as silenced, and its firing notice goes out if it is still firing when
the silence ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from dvic_core.constants import LEVEL_NUMBERS

from ..bus import Bus
from ..dbconn import ReadDB, WriteConn
from ..errors import Refusal
from ..registry import NodeState, Registry
from ..release import parse_version
from ..writer import Writer
from . import queries, store
from .model import Alert, Notice, NoticeKind, NoticeSink
from .patterns import MATCH_CHARS
from .rules import MAX_OPERATOR_RULES, STOCK, Rule, RuleError, operator_rule, rule_from_row, stored_form, tune
from .silences import QuietHook, Silence, SilenceRequest, never_quiet
from .stock import (
    CLEAR,
    EVALUATORS,
    FIRE,
    LOG_WINDOW_S,
    EvalContext,
    RateWindow,
    Reading,
    demo_subject,
    summary,
)

# Rules whose readings are counts of log lines over LOG_WINDOW_S.
LOG_TYPES = frozenset({"log", "log_errors"})
# The daemon's events that raise or clear a demo's flag (demo_crashloop, demo_unhealthy).
DEMO_FLAG_EVENTS = ("demo_crashloop", "demo_unhealthy", "demo_recovered")


@dataclass(frozen=True)
class DemoFact:
    """A stored demo event or demo status, as `rebuild_demo_flags` takes it."""

    at: float
    node_id: str
    kind: str  # an event's kind, or "demo_status"
    data: Mapping[str, Any]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (rule, subject)
# A log rule whose pattern matching takes more than this per LOG_BUDGET_WINDOW_S is suspended for
# LOG_SUSPEND_S (docs/alerts.md, "Log patterns").
LOG_BUDGET_S = 0.05
LOG_BUDGET_WINDOW_S = 10.0
LOG_SUSPEND_S = 600.0
MAX_ACK_NOTE = 1000
TRIM_EVERY_S = 3600.0
# A full pass over 20,000 nodes is ~200 ms of CPU: run in one go it would hold every node's frames
# (and their acks) that long every interval. It gives the event loop a turn after each slice.
PASS_SLICE_S = 0.005


class AlertError(Refusal):
    """A refused operator request (the API turns it into status + code + message)."""


K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


def found(items: Mapping[K, V], key: K, missing: str) -> V:
    """items[key], or the 404 an operator's request on something gone gets."""
    item = items.get(key)
    if item is None:
        raise AlertError(404, "not_found", missing)
    return item


@dataclass(eq=False)
class Tracked:
    """An open alert and the engine's bookkeeping for it."""

    alert: Alert
    node_id: str | None
    notified: bool = False  # its firing notice went out (so its resolution is told too)
    last_notice: float | None = None


@dataclass(eq=False)
class NodeAlerts:
    open: dict[Key, Tracked] = field(default_factory=dict)
    pending: dict[Key, float] = field(default_factory=dict)  # condition holds since, "for" not yet over


@dataclass(eq=False)
class Changes:
    """What one pass decided; written in one commit, then applied to memory and told."""

    opens: list[tuple[Tracked, NodeState]] = field(default_factory=list)
    resolves: list[tuple[Tracked, str]] = field(default_factory=list)
    notices: list[tuple[Tracked, NoticeKind]] = field(default_factory=list)
    suppressed: list[tuple[Tracked, NoticeKind, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.opens or self.resolves or self.notices or self.suppressed)


class LoggingSink:
    """The sink when no dispatcher is configured: notices go to the server log."""

    def persist(self, conn: WriteConn, notices: Sequence[Notice]) -> object:
        return list(notices)

    def committed(self, persisted: object) -> None:
        for notice in persisted if isinstance(persisted, list) else ():
            a = notice.alert
            log.info("alert notice %s: #%d %s %s [%s] %s", notice.kind, a.id, a.rule, a.subject, a.severity,
                     a.summary)


@dataclass(eq=False)
class LogRule:
    rule: Rule
    regex: re.Pattern[str] | None
    min_level: int
    spent: float = 0.0  # seconds of matching in the current budget window
    window_start: float = 0.0


class AlertEngine:
    def __init__(self, writer: Writer, registry: Registry, bus: Bus, *, interval: float = 10.0,
                 reminder_s: float = 3600.0, startup_grace_s: float | None = None, history_s: float = 90 * 86400.0,
                 release: Callable[[], str | None] = lambda: None, sink: NoticeSink | None = None,
                 quiet: QuietHook = never_quiet, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.registry = registry
        self.bus = bus
        self.interval = interval
        self.reminder_s = reminder_s
        self.history_s = history_s  # resolved alerts are kept this long (the events' retention)
        self.sink: NoticeSink = sink if sink is not None else LoggingSink()
        self.quiet = quiet
        self.clock = clock
        self.pass_slice_s = PASS_SLICE_S
        self._release = release
        now = clock()
        # After a start every node is offline until it reconnects: give them the offline threshold
        # and a keep-alive interval before anyone is called about it.
        grace = startup_grace_s if startup_grace_s is not None else registry.offline_after + registry.keepalive_interval
        self.ctx = EvalContext(now=now, offline_from=now + grace, watching_since=now, release=None)
        self.rules: dict[str, Rule] = dict(STOCK)
        self._tuning: dict[str, dict[str, Any]] = {}  # stock rule -> stored settings
        self._evaluators: list[tuple[Rule, Any]] = []
        self._log_rules: list[LogRule] = []
        self.suspended: dict[str, tuple[float, str]] = {}  # log rule -> (until, why)
        self.silences: dict[int, Silence] = {}
        self._nodes: dict[str, NodeAlerts] = {}
        self._by_id: dict[int, Tracked] = {}
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()
        self._full = False
        self._wake = asyncio.Event()
        self._counts: dict[str, int] = {}
        self.passes = 0
        self.last_pass_s = 0.0
        # On a replica not leading the feature areas: the leader's counts, from its `alerts` frames
        # (this engine's own state is not kept up to date there).
        self.leaders_counts: dict[str, int] | None = None
        # Until then log-rule counts are younger than their window (a reload started them again):
        # they may open an alert but not end one (it would end and fire again, notified twice).
        self.logs_full_from = 0.0
        self._rebuild()

    # -- loading ---------------------------------------------------------------------------------
    async def reload(self, db: ReadDB) -> None:
        """Forget everything and load again (a replica gaining the features lead: what it had in
        memory may be stale). Log-rule counts and demo flags start again empty (the features leader
        then rebuilds them from what is stored: central/cluster/features.py)."""
        async with self._lock:
            self._forget()
            self.logs_full_from = self.clock() + LOG_WINDOW_S
            await self.load(db)
        self.kick()

    def _forget(self) -> None:
        self.rules = dict(STOCK)
        self._tuning.clear()
        self.suspended.clear()
        self.silences.clear()
        self._nodes.clear()
        self._by_id.clear()
        self._dirty.clear()
        self.ctx.log_counts.clear()
        self.ctx.demo_flags.clear()
        self._counts = {}
        self.leaders_counts = None

    async def load(self, db: ReadDB) -> None:
        """Rules, open alerts and current silences from the database (at start)."""
        for row in await queries.rules(db):
            try:
                rule = rule_from_row(row["stock"], row["name"], row["spec"])
            except RuleError as exc:  # written by an older release with looser checks: keep the rest
                log.error("alert rule %s not loaded: %s", row["name"], exc.message)
                continue
            if rule is None:
                continue
            self.rules[rule.name] = rule
            if row["stock"]:
                self._tuning[rule.name] = row["spec"]
        for row in await queries.open_alerts(db):
            tracked = Tracked(row["alert"], row["node_id"], row["notified"], row["last_notice"])
            self._track(tracked)
        now = self.clock()
        self.silences = {s.id: s for s in await queries.silences(db, now)}
        self._rebuild()
        self._publish_counts()

    @property
    def watches_logs(self) -> bool:
        """Some rule counts log lines (observe_logs has work to do)."""
        return bool(self._log_rules)

    @property
    def least_log_level(self) -> int:
        """The lowest level a log rule counts (lines below it are never counted)."""
        return min((lr.min_level for lr in self._log_rules), default=0)

    def _rebuild(self) -> None:
        order = sorted(self.rules.values(), key=lambda r: (not r.stock, r.name))
        self._evaluators = [(r, EVALUATORS[r.type]) for r in order if r.enabled]
        log_rules = []
        for r in order:
            if r.enabled and r.type in ("log", "log_errors"):
                regex = re.compile(r.pattern) if r.pattern else None
                log_rules.append(LogRule(r, regex, LEVEL_NUMBERS.get(r.level or "DEBUG", 0)))
        self._log_rules = log_rules

    def _track(self, tracked: Tracked) -> None:
        key = (tracked.alert.rule, tracked.alert.subject)
        self._nodes.setdefault(tracked.node_id or "", NodeAlerts()).open[key] = tracked
        self._by_id[tracked.alert.id] = tracked

    def _untrack(self, tracked: Tracked) -> None:
        na = self._nodes.get(tracked.node_id or "")
        if na is not None:
            na.open.pop((tracked.alert.rule, tracked.alert.subject), None)
            if not na.open and not na.pending:
                del self._nodes[tracked.node_id or ""]
        self._by_id.pop(tracked.alert.id, None)

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Evaluate every node each `interval`; nodes named by events at once in between."""
        next_full = time.monotonic()
        next_trim = next_full + 60.0
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that comes
            # as the event is set (a node going offline as the server stops), and the job never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_full - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            full = self._full or time.monotonic() >= next_full
            try:
                if full:
                    self._full = False
                    self._dirty.clear()
                    await self.evaluate()
                else:
                    dirty, self._dirty = self._dirty, set()
                    await self.evaluate(dirty)
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage error now must not end alerting for good
                log.exception("alert evaluation failed")
            if full:
                next_full = time.monotonic() + self.interval
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + TRIM_EVERY_S
                await self._trim()

    async def _trim(self) -> None:
        before = self.clock() - self.history_s
        try:
            while await self.writer.submit(lambda conn: store.trim_history(conn, before)):
                pass
        except asyncio.CancelledError:
            raise
        except Exception:  # next hour, then
            log.exception("trimming the alert history failed")

    def kick(self, node_id: str | None = None) -> None:
        """Evaluate this node (or everything) soon, not at the next interval."""
        if node_id is None:
            self._full = True
        else:
            self._dirty.add(node_id)
        self._wake.set()

    # -- hooks the server calls ------------------------------------------------------------------
    def on_event(self, node: NodeState | None, kind: str, data: Mapping[str, Any], at: float | None = None) -> None:
        """Every stored event (Registry.event_observers): presence changes and the daemon's demo events
        (`at`: when it happened, for events read again from the table)."""
        if node is None:
            return
        if kind in DEMO_FLAG_EVENTS:
            self._flag_from_event(node.id, kind, data, at)
        elif kind not in ("state", "revoked", "demo_exited", "demo_started"):
            return
        self.kick(node.id)

    def _flag_from_event(self, node_id: str, kind: str, data: Mapping[str, Any], at: float | None) -> None:
        demo = data.get("demo")
        if not isinstance(demo, str) or not demo:
            return
        if kind in ("demo_crashloop", "demo_unhealthy"):
            self._flag(node_id, kind, demo, True, at)
        elif data.get("was") in ("crashloop", "unhealthy"):  # demo_recovered
            self._flag(node_id, f"demo_{data['was']}", demo, False)

    def on_demo_status(self, node: NodeState, msg: Mapping[str, Any], at: float | None = None) -> None:
        """A supervised demo's `demo_status` (docs/protocol.md section 6): crashloop and cannot-start
        raise their alerts; a healthy, running or stopped demo clears what it had."""
        demo, state = msg.get("demo"), msg.get("state")
        if not isinstance(demo, str) or not demo:
            return
        if state == "crashloop":
            self._flag(node.id, "demo_crashloop", demo, True, at)
        elif state == "failed":
            self._flag(node.id, "demo_exited", demo, True, at)
        elif state in ("healthy", "running", "stopped"):
            for rule in ("demo_crashloop", "demo_unhealthy", "demo_exited"):
                self._flag(node.id, rule, demo, False)
        self.kick(node.id)

    def rebuild_demo_flags(self, history: Iterable[DemoFact]) -> None:
        """The demo flags again from what is stored (a replica gaining the features lead): the demo
        events and the demos' statuses, taken in the order they happened, as they came then. An open
        demo alert is then still true, not ended and raised again."""
        self.ctx.demo_flags.clear()
        for fact in sorted(history, key=lambda f: f.at):
            if fact.kind == "demo_status":
                node = self.registry.get(fact.node_id)
                if node is not None:
                    self.on_demo_status(node, fact.data, fact.at)
            else:
                self._flag_from_event(fact.node_id, fact.kind, fact.data, fact.at)
        self.kick()

    def _flag(self, node_id: str, rule: str, demo: str, on: bool, at: float | None = None) -> None:
        flags = self.ctx.demo_flags.setdefault(node_id, {}).setdefault(rule, {})
        if on:
            flags.setdefault(demo, self.clock() if at is None else at)
        else:
            flags.pop(demo, None)

    def observe_logs(self, node: NodeState, lines: Sequence[Mapping[str, Any]]) -> None:
        """Count the lines log rules watch (called with each batch a node sends, before its commit)."""
        if not self._log_rules or not lines:
            return
        now = self.clock()
        for lr in self._log_rules:
            rule = lr.rule
            if not rule.scope.everything and not rule.scope.matches(node.name, node.group, node.kind):
                continue
            if rule.name in self.suspended:
                if now < self.suspended[rule.name][0]:
                    continue
                del self.suspended[rule.name]
            self._count(lr, node, lines, now)

    def _count(self, lr: LogRule, node: NodeState, lines: Sequence[Mapping[str, Any]], now: float) -> None:
        rule, regex, least = lr.rule, lr.regex, lr.min_level
        started = time.perf_counter()
        hits: dict[str, int] = {}
        # Lines written before the window (a node shipping its backlog after an outage or a server
        # restart) are not a rate now. Their `ts` is the node's clock: compare on it, skew applied.
        oldest = now + (node.clock_skew or 0.0) - LOG_WINDOW_S
        for line in lines:
            if LEVEL_NUMBERS[line["level"]] < least or line["ts"] < oldest:
                continue
            source = line["source"]
            if regex is None:  # log_errors: demos only
                if source != "demo":
                    continue
            elif regex.search(line["msg"][:MATCH_CHARS]) is None:
                continue
            unit = line["unit"] or "-"
            subject = demo_subject(node, unit) if source == "demo" else f"unit:{node.name}/{unit}"
            hits[subject] = hits.get(subject, 0) + 1
        if hits:
            counts = self.ctx.log_counts.setdefault(node.id, {})
            for subject, n in hits.items():
                window = counts.get((rule.name, subject))
                if window is None:
                    window = counts[(rule.name, subject)] = RateWindow()
                window.add(now, n)
        if regex is not None:
            self._spend(lr, time.perf_counter() - started, now)

    def _spend(self, lr: LogRule, seconds: float, now: float) -> None:
        if now - lr.window_start >= LOG_BUDGET_WINDOW_S:
            lr.window_start, lr.spent = now, 0.0
        lr.spent += seconds
        if lr.spent > LOG_BUDGET_S:
            why = (f"its pattern took {lr.spent * 1000:.0f} ms of matching within {LOG_BUDGET_WINDOW_S:g} s "
                   f"(budget {LOG_BUDGET_S * 1000:.0f} ms): suspended for {LOG_SUSPEND_S / 60:.0f} min")
            self.suspended[lr.rule.name] = (now + LOG_SUSPEND_S, why)
            lr.spent = 0.0
            log.warning("alert rule %s: %s", lr.rule.name, why)

    # -- evaluation ------------------------------------------------------------------------------
    async def evaluate(self, node_ids: Iterable[str] | None = None) -> Changes:
        """One pass over every node (or these): start, keep and resolve alerts; send due notices."""
        async with self._lock:
            started = time.perf_counter()
            now = self.clock()
            ctx = self.ctx
            ctx.now = now
            release = self._release()
            ctx.release = None if not release else ctx.versions.get(release) or _parse_release(ctx, release)
            changes = Changes()
            if node_ids is None:
                nodes: Iterable[NodeState] = self.registry.all()
                await self._forget_idle_counts(now)
            else:
                nodes = [n for n in (self.registry.get(i) for i in node_ids) if n is not None]
            async for node in self._in_slices(nodes):  # (a node changed meanwhile is judged as it is then)
                self._evaluate_node(node, now, changes)
            if node_ids is None:
                self._orphans(changes)
                self._due_notices(now, changes)
            await self._apply(changes, now)
            if node_ids is None:
                self.passes += 1
                self.last_pass_s = time.perf_counter() - started
            return changes

    def _evaluate_node(self, node: NodeState, now: float, changes: Changes) -> None:
        na = self._nodes.get(node.id)
        if node.revoked or node.maintenance:
            if na is not None:
                why = "node revoked" if node.revoked else "node in maintenance"
                changes.resolves.extend((t, why) for t in na.open.values())
                na.pending.clear()
            return
        ctx = self.ctx
        held: set[str] = set()
        seen: set[Key] = set()
        for rule, evaluate in self._evaluators:
            if not rule.scope.everything and not rule.scope.matches(node.name, node.group, node.kind):
                continue
            readings = evaluate(rule, node, ctx)
            if readings is None:
                held.add(rule.name)
                continue
            warming = rule.type in LOG_TYPES and now < self.logs_full_from
            if warming:
                held.add(rule.name)
            for reading in readings:
                if warming and reading[1] != FIRE:
                    continue
                if reading[1] == CLEAR and na is None:
                    continue  # the common case: nothing wrong, nothing open
                if na is None:
                    na = self._nodes.setdefault(node.id, NodeAlerts())
                self._judge(rule, node, na, reading, now, changes)
                seen.add((rule.name, reading[0]))
        if na is not None:
            self._gone(na, held, seen, changes)
            if not na.open and not na.pending:
                self._nodes.pop(node.id, None)

    def _judge(self, rule: Rule, node: NodeState, na: NodeAlerts, reading: Reading, now: float,
               changes: Changes) -> None:
        subject, level, value, since = reading
        key = (rule.name, subject)
        tracked = na.open.get(key)
        if tracked is not None:
            if level == CLEAR:
                changes.resolves.append((tracked, "cleared"))
            return
        if level != FIRE:  # between the thresholds or clear: a "for" starts over
            na.pending.pop(key, None)
            return
        began = na.pending.setdefault(key, min(since, now) if since is not None else now)
        if now - began < rule.for_s:
            return
        del na.pending[key]
        alert = Alert(id=0, rule=rule.name, subject=subject, node=node.name, group=node.group or None,
                      kind=node.kind, severity=rule.severity, state="firing",
                      summary=summary(rule, node, subject, value), started=now)
        changes.opens.append((Tracked(alert, node.id), node))

    def _gone(self, na: NodeAlerts, held: set[str], seen: set[Key], changes: Changes) -> None:
        """Open alerts and pending conditions this pass no longer reported end (rule held: kept)."""
        for key, tracked in na.open.items():
            if key[0] not in held and key not in seen:
                reason = "rule disabled or removed" if key[0] not in self.rules or not self.rules[key[0]].enabled \
                    else "no longer reported"
                changes.resolves.append((tracked, reason))
        for key in [k for k in na.pending if k[0] not in held and k not in seen]:
            del na.pending[key]

    def _orphans(self, changes: Changes) -> None:
        """Open alerts whose node is gone from the registry (none today; an alert of a server rule)."""
        for node_id, na in self._nodes.items():
            if node_id and self.registry.get(node_id) is None:
                changes.resolves.extend((t, "node no longer known") for t in na.open.values())

    async def _in_slices(self, items: Iterable[T]) -> AsyncIterator[T]:
        """The items, with a turn for the event loop after each `pass_slice_s` of work."""
        slice_started = time.perf_counter()
        for index, item in enumerate(items):
            yield item
            if not index & 63 and time.perf_counter() - slice_started >= self.pass_slice_s:
                await asyncio.sleep(0)
                slice_started = time.perf_counter()

    async def _forget_idle_counts(self, now: float) -> None:
        async for node_id in self._in_slices(list(self.ctx.log_counts)):
            counts = self.ctx.log_counts.get(node_id)
            if counts is None:
                continue  # (the rules were reloaded meanwhile: the counts start over)
            open_keys = self._nodes[node_id].open if node_id in self._nodes else {}
            for key in [k for k, w in counts.items() if w.total(now) == 0 and k not in open_keys]:
                del counts[key]
            if not counts:
                del self.ctx.log_counts[node_id]

    def _due_notices(self, now: float, changes: Changes) -> None:
        """Reminders for alerts still firing unacknowledged, and firing notices held back by a silence
        that has ended."""
        resolving = {id(t) for t, _ in changes.resolves}
        for tracked in self._by_id.values():
            if tracked.alert.state != "firing" or id(tracked) in resolving:
                continue
            due: NoticeKind | None = None
            if not tracked.notified:
                due = "firing"
            elif now - (tracked.last_notice or tracked.alert.started) >= self.reminder_s:
                due = "reminder"
            if due is not None and self._suppressed(tracked.alert, now) is None:
                changes.notices.append((tracked, due))

    # -- suppression -----------------------------------------------------------------------------
    def _suppressed(self, alert: Alert, now: float) -> str | None:
        """Why a notice about this alert must not go out now (None: it may)."""
        for silence in self.silences.values():
            if silence.active(now) and silence.matches(alert):
                return f"silence {silence.id}"
        if self.quiet(alert.group, alert.severity):
            return "quiet hours"
        return None

    def silenced_by(self, alert: Alert) -> str | None:
        return self._suppressed(alert, self.clock()) if alert.state != "resolved" else None

    # -- applying a pass -------------------------------------------------------------------------
    async def _apply(self, changes: Changes, now: float) -> None:
        if not changes:
            return
        resolves = _unique(changes.resolves)
        for tracked, _ in changes.opens:
            why = self._suppressed(tracked.alert, now)
            if why is None:
                changes.notices.append((tracked, "firing"))
            else:
                changes.suppressed.append((tracked, "firing", why))
        notices = [(t, k) for t, k in changes.notices]
        notices += [(t, "resolved") for t, _ in resolves if t.notified]

        def write(conn: WriteConn) -> object:
            ids = [store.insert_alert(conn, t.alert, t.node_id) for t, _ in changes.opens]
            for tracked, reason in resolves:
                store.resolve_alert(conn, tracked.alert.id, now, reason)
            for (tracked, _), alert_id in zip(changes.opens, ids, strict=True):
                tracked.alert = replace(tracked.alert, id=alert_id)
            for tracked, kind in notices:
                store.record_notice(conn, tracked.alert.id, now, kind)
            for tracked, kind, why in changes.suppressed:
                store.record_suppressed(conn, tracked.alert.id, now, kind, why)
            # The notices themselves go in this same commit (NoticeSink): told exactly when stored.
            told = [Notice(kind, replace(t.alert, state="resolved", resolved=now) if kind == "resolved" else t.alert,
                           now) for t, kind in notices]
            return self.sink.persist(conn, told) if told else None

        try:
            persisted = await self.writer.submit(write)
        except BaseException:
            for tracked, _ in changes.opens:  # not stored: the next pass sees the condition again
                tracked.alert = replace(tracked.alert, id=0)
            raise
        for tracked, _node in changes.opens:
            self._track(tracked)
            self._publish(tracked, "firing")
        for tracked, reason in resolves:
            self._untrack(tracked)
            tracked.alert = replace(tracked.alert, state="resolved", resolved=now)
            self._publish(tracked, "resolved", reason)
        for tracked, kind in notices:
            if kind != "resolved":
                tracked.notified, tracked.last_notice = True, now
            if kind == "reminder":
                self._publish(tracked, "reminder")
        self._publish_counts()
        self._committed(persisted)

    def _committed(self, persisted: object) -> None:
        if persisted is None:
            return
        try:
            self.sink.committed(persisted)
        except Exception:  # the dispatcher must not raise; if it does, evaluation goes on
            log.exception("the notice sink failed after a commit (its notices are stored)")

    def _publish(self, tracked: Tracked, change: str, reason: str = "") -> None:
        frame: dict[str, Any] = {"type": "alert", "change": change, "alert": self.alert_view(tracked.alert)}
        if reason:
            frame["reason"] = reason
        self.bus.publish(frame)

    def counts(self) -> dict[str, int]:
        if self.leaders_counts is not None:
            return dict(self.leaders_counts)
        now = self.clock()
        firing = acknowledged = silenced = 0
        for tracked in self._by_id.values():
            if tracked.alert.state == "acknowledged":
                acknowledged += 1
            elif self._suppressed(tracked.alert, now) is not None:
                silenced += 1
            else:
                firing += 1
        return {"firing": firing, "acknowledged": acknowledged, "silenced": silenced,
                "open": firing + acknowledged + silenced}

    def _publish_counts(self) -> None:
        counts = self.counts()
        if counts != self._counts:
            self._counts = counts
            self.bus.publish({"type": "alerts", "counts": counts})

    # -- views -----------------------------------------------------------------------------------
    def alert_view(self, alert: Alert) -> dict[str, Any]:
        out = asdict(alert)
        why = self.silenced_by(alert)
        out["silenced"] = why is not None
        out["silenced_by"] = why
        return out

    def open_alerts(self) -> list[Alert]:
        """Firing first (critical first), then acknowledged; newest first within each."""
        rank = {"critical": 0, "warning": 1, "info": 2}
        return sorted((t.alert for t in self._by_id.values()),
                      key=lambda a: (a.state != "firing", rank.get(a.severity, 3), -a.started))

    def rule_view(self, rule: Rule) -> dict[str, Any]:
        out = rule.as_dict()
        suspended = self.suspended.get(rule.name)
        out["suspended"] = suspended[1] if suspended and suspended[0] > self.clock() else None
        out["tuned"] = rule.stock and rule.name in self._tuning
        return out

    # -- operator actions ------------------------------------------------------------------------
    async def acknowledge(self, alert_id: int, who: str, note: str) -> Alert:
        if len(note) > MAX_ACK_NOTE:
            raise AlertError(400, "bad_note", f"note: at most {MAX_ACK_NOTE} characters")
        async with self._lock:
            tracked = found(self._by_id, alert_id, f"no open alert #{alert_id} (resolved, or never existed)")
            if tracked.alert.state == "acknowledged":
                a = tracked.alert
                raise AlertError(409, "already_acknowledged", f"alert #{alert_id} was acknowledged by {a.acked_by}")
            now = self.clock()
            tell = tracked.notified and self._suppressed(tracked.alert, now) is None

            acked = replace(tracked.alert, state="acknowledged", acked_by=who, acked_at=now, ack_note=note)

            def write(conn: WriteConn) -> object:
                changed = store.acknowledge(conn, alert_id, who, now, note)
                if changed and tell:
                    store.record_notice(conn, alert_id, now, "acknowledged")
                    return self.sink.persist(conn, [Notice("acknowledged", acked, now)])
                return None

            persisted = await self.writer.submit(write, urgent=True)
            tracked.alert = acked
            self._publish(tracked, "acknowledged")
            self._publish_counts()
            self._committed(persisted)
            return tracked.alert

    async def add_silence(self, request: SilenceRequest, who: str) -> Silence:
        async with self._lock:
            now = self.clock()
            ends = now + request.duration_s
            silence_id = await self.writer.submit(
                lambda conn: store.insert_silence(conn, request.matcher, now, ends, request.note, who), urgent=True)
            m = request.matcher
            silence = Silence(id=silence_id, starts=now, ends=ends, note=request.note, created_by=who,
                              created_at=now, group=m.get("group"), node=m.get("node"), rule=m.get("rule"),
                              severity=m.get("severity"))
            self.silences[silence_id] = silence
            self.bus.publish({"type": "silence", "change": "added", "silence": silence.as_dict(now)})
            self._publish_counts()
            return silence

    async def remove_silence(self, silence_id: int, who: str) -> Silence:
        async with self._lock:
            silence = found(self.silences, silence_id, f"no current silence #{silence_id}")
            now = self.clock()
            await self.writer.submit(lambda conn: store.remove_silence(conn, silence_id, now, who), urgent=True)
            del self.silences[silence_id]
            gone = replace(silence, removed_at=now, removed_by=who)
            self.bus.publish({"type": "silence", "change": "removed", "silence": gone.as_dict(now)})
            self._publish_counts()
        self.kick()  # held-back firing notices may go out now
        return gone

    def current_silences(self) -> list[Silence]:
        now = self.clock()
        for silence_id in [i for i, s in self.silences.items() if s.ends <= now]:
            del self.silences[silence_id]
        return sorted(self.silences.values(), key=lambda s: s.ends)

    async def add_rule(self, spec: Mapping[str, Any], who: str) -> Rule:
        rule = operator_rule(spec)
        async with self._lock:
            if rule.name in self.rules:
                raise RuleError("name_taken", f"a rule named {rule.name!r} exists: change it with `dvic rule set`")
            if sum(1 for r in self.rules.values() if not r.stock) >= MAX_OPERATOR_RULES:
                raise RuleError("too_many_rules", f"at most {MAX_OPERATOR_RULES} operator rules")
            await self._save(rule, stored_form(rule), who)
        return rule

    async def set_rule(self, name: str, settings: Mapping[str, Any], who: str) -> Rule:
        async with self._lock:
            current = found(self.rules, name, f"no rule named {name!r} (`dvic rule list` shows them)")
            if current.stock:
                merged = {**self._tuning.get(name, {}), **settings}
                rule = tune(STOCK[name], merged)
                await self._save(rule, merged, who)
                self._tuning[name] = merged
            else:
                rule = tune(current, settings)
                await self._save(rule, stored_form(rule), who)
        self.kick()
        return rule

    async def remove_rule(self, name: str, who: str) -> Rule:
        """An operator rule is deleted; a stock rule goes back to its defaults."""
        async with self._lock:
            current = found(self.rules, name, f"no rule named {name!r}")
            await self.writer.submit(lambda conn: store.delete_rule(conn, name), urgent=True)
            if current.stock:
                self.rules[name] = STOCK[name]
                self._tuning.pop(name, None)
            else:
                del self.rules[name]
            self.suspended.pop(name, None)
            self._rebuild()
        self.kick()
        return self.rules.get(name, current)

    async def _save(self, rule: Rule, spec: Mapping[str, Any], who: str) -> None:
        now = self.clock()
        await self.writer.submit(lambda conn: store.save_rule(conn, rule.name, rule.stock, spec, now, who),
                                 urgent=True)
        self.rules[rule.name] = rule
        self.suspended.pop(rule.name, None)
        self._rebuild()


def _parse_release(ctx: EvalContext, release: str) -> tuple[int, ...]:
    version = ctx.versions[release] = parse_version(release)
    return version


def _unique(resolves: list[tuple[Tracked, str]]) -> list[tuple[Tracked, str]]:
    """One resolution per alert (a pass may find an alert gone for two reasons)."""
    seen: set[int] = set()
    out = []
    for tracked, reason in resolves:
        if id(tracked) not in seen:
            seen.add(id(tracked))
            out.append((tracked, reason))
    return out
