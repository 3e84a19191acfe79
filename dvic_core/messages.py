"""Node protocol v1 (docs/protocol.md sections 2 and 6): every message type, declared once.

Each type says who sends it (the node, the server, or both), its fields as a schema
(dvic_core/schema.py) and, for a node's reply to a server request, the hub that owns the request
(`commands`, `shells`, `tunnels`, `actions`, `updates`). The server validates every node frame
with these schemas (central/messages.py) and dispatches by this table (central/nodehub.py); tests
check the daemon's own copy of the types and limits, the shared vectors and docs/protocol.md
against it. The daemon keeps its copies (one file, Python 3.8, standard library only).
"""

from __future__ import annotations

from .constants import (
    ACTION_STATES,
    ACTIONS,
    DEMO_STATES,
    LEVELS,
    LOG_SOURCES,
    NAME_PATTERN,
    PROTOCOL_VERSION,
)
from .schema import (
    OMIT,
    Array,
    Base64,
    Bool,
    Const,
    Enum,
    Int,
    Json,
    Number,
    Object,
    Schema,
    SchemaError,
    Str,
)

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

# Limits of the protocol (the daemon holds copies: MAX_FRAME, MAX_BATCH_LINES, MAX_MSG_BYTES, MAX_PAYLOAD).
MAX_FRAME_BYTES = 1024 * 1024
MAX_BATCH_LINES = 500
MAX_MSG_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 48 * 1024  # decoded payload of one exec_output, shell_output or tunnel_data
MAX_METRICS_CHARS = 64 * 1024
MAX_FACT_CHARS = 256
# The largest magnitude a stored metric may have: room for byte counters up to a petabyte, and
# far from where SQLite's avg()/sum() of many samples could overflow to Infinity.
MAX_METRIC_ABS = 1e15
MAX_INT = 2**63 - 1  # SQLite's INTEGER

EXIT_REASONS = ("exited", "timeout", "cancelled", "failed", "duplicate", "refused")
UPDATE_STATES = ("downloading", "verified", "restarting", "refused", "failed", "rolled_back")

# Supervised demos (section 6): the daemon holds copies (DEMO_VERSION_RE, INSTALL_STATES, MAX_DESIRED_DEMOS).
DEMO_VERSION = r"[0-9]{1,9}(\.[0-9]{1,9}){0,7}(-[A-Za-z0-9._]{1,64})?"
MAX_DEMO_VERSION_CHARS = 9 * 8 + 7 + 1 + 64  # the longest DEMO_VERSION
SHA256_HEX = r"[0-9a-f]{64}"
MAX_RELEASE_BYTES = 1024**4
MAX_DESIRED_DEMOS = 64
MAX_ROLLOUT_CHARS = 128
# An install in progress, then how it ended (healthy, failed, rolled_back) or the demo's removal.
DEMO_INSTALL_STATES = ("queued", "downloading", "verifying", "installing", "stopping_old", "starting",
                       "healthy", "failed", "rolled_back", "removed")
DEMO_RUN_STATES = ("running", "healthy", "unhealthy", "crashloop", "stopped", "failed")

NODE = "node"
SERVER = "server"
HUBS = ("commands", "shells", "tunnels", "actions", "updates")


class Message:
    """One message type: who sends it, its schema, and (a node's reply) the hub it goes to."""

    def __init__(self, type: str, senders: tuple[str, ...], fields: dict[str, Schema], *, hub: str | None = None,
                 max_chars: int | None = None) -> None:
        if hub is not None and hub not in HUBS:
            raise ValueError(f"{type}: unknown hub {hub!r}")
        self.type = type
        self.senders = senders
        self.schema = Object({"type": Const(type), **fields})
        self.hub = hub
        # A bound on the whole frame's text (metrics: their sample is kept as sent).
        self.max_chars = max_chars

    def parse(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message's fields, checked and cleaned (SchemaError: the first that is wrong)."""
        return self.schema.parse(message)


MESSAGES: dict[str, Message] = {}


def _declare(type: str, senders: tuple[str, ...], fields: dict[str, Schema], **options: Any) -> None:
    if type in MESSAGES:
        raise ValueError(f"message type {type!r} declared twice")
    MESSAGES[type] = Message(type, senders, fields, **options)


def sent_by(sender: str) -> dict[str, Message]:
    """The types `sender` (NODE or SERVER) may send."""
    return {name: m for name, m in MESSAGES.items() if sender in m.senders}


# -- field shapes used by many types ---------------------------------------------------------------
def _metric(**options: Any) -> Number:
    return Number(min=-MAX_METRIC_ABS, max=MAX_METRIC_ABS, **options)


def _request_id() -> Str:
    """The id the server gave a request, repeated in every reply."""
    return Str(max_len=64, required=True)


def _text(limit: int = 4096) -> Str:
    return Str(max_len=limit, nullable=True, default="")


def _int_or_null() -> Int:
    return Int(nullable=True, expects="expected an integer or null")


def _payload() -> Base64:
    return Base64(max_bytes=MAX_CHUNK_BYTES, required=True)


# -- node -> server (section 2) --------------------------------------------------------------------
_declare("hello", (NODE,), {
    # Checked first, with its own code (the node websocket closes with 4004 for it).
    "protocol": Int(min=PROTOCOL_VERSION, max=PROTOCOL_VERSION, required=True, code="bad_version",
                    message=f"protocol version {{raw}} is not supported (server speaks {PROTOCOL_VERSION})"),
    "daemon_version": Str(max_len=64, nullable=True, default=""),
    # Cleaned key by key by the server (central/messages.py clean_facts), not refused.
    "facts": Json(default={}),
})

# Every field but ts is optional and kept as sent (the node detail shows the latest sample); the
# series the server stores are checked when derived (central/messages.py metric_series).
_declare("metrics", (NODE,), {
    "ts": _metric(required=True),
    **{name: Json(default=OMIT) for name in ("cpu", "load", "mem", "swap", "disks", "temps", "throttled", "uptime",
                                             "procs", "net")},
}, max_chars=MAX_METRICS_CHARS)

LOG_LINE = Object({
    "seq": Int(min=1, max=MAX_INT, required=True, expects="expected an integer >= 1"),
    "ts": Number(required=True),
    "source": Enum(LOG_SOURCES, required=True),
    "unit": Str(max_len=256, nullable=True, default=""),
    "demo": Str(max_len=64, nullable=True, default=""),
    "level": Enum(LEVELS, required=True),
    # Cut, not refused: a longer message is kept to MAX_MSG_BYTES and marked truncated.
    "msg": Str(required=True, max_bytes=MAX_MSG_BYTES, marks="truncated"),
    "truncated": Bool(coerce=True, default=False),
})
_declare("logs", (NODE,), {
    "lines": Array(LOG_LINE, max_items=MAX_BATCH_LINES, required=True,
                   too_many=f"more than {MAX_BATCH_LINES} lines in one batch"),
})

_declare("demo", (NODE,), {
    "token": Str(max_len=64, required=True),
    "name": Str(max_len=256, nullable=True, default=""),
    "pid": Int(min=0, nullable=True, expects="expected a non-negative integer"),
    "state": Enum(DEMO_STATES, required=True),
    "started_at": Number(nullable=True),
    "exited_at": Number(nullable=True),
    # Cleaned like facts and cut to size by the server (central/messages.py clean_demo_header).
    "header": Json(default={}),
    # The ts of the demo's latest dvic_log record (docs/log-format.md "Heartbeats"); absent from older daemons.
    "last_heartbeat": Number(nullable=True),
})

_declare("event", (NODE,), {
    "kind": Str(max_len=64, required=True),
    "message": _text(),
    "data": Json(json_kind="object", max_chars=16 * 1024, default={}),
})

# -- remote control (section 6): replies from the node ---------------------------------------------
_declare("exec_started", (NODE,), {"id": _request_id(), "pid": _int_or_null()}, hub="commands")
_declare("exec_output", (NODE,), {
    "id": _request_id(),
    "stream": Enum(("stdout", "stderr"), required=True, expects="expected stdout or stderr"),
    "data": Str(max_len=MAX_CHUNK_BYTES, max_bytes=MAX_CHUNK_BYTES, required=True),
}, hub="commands")
_declare("exec_exit", (NODE,), {
    "id": _request_id(), "code": _int_or_null(), "signal": _int_or_null(),
    "reason": Enum(EXIT_REASONS, default="exited"), "message": _text(), "truncated": Bool(coerce=True, default=False),
}, hub="commands")
_declare("shell_opened", (NODE,), {"id": _request_id(), "pid": _int_or_null()}, hub="shells")
_declare("shell_output", (NODE,), {"id": _request_id(), "data": _payload()}, hub="shells")
_declare("shell_exit", (NODE,), {"id": _request_id(), "code": _int_or_null(), "message": _text()}, hub="shells")
_declare("action_state", (NODE,), {
    "id": _request_id(), "state": Enum(ACTION_STATES, required=True), "message": _text(),
}, hub="actions")
_declare("tunnel_opened", (NODE,), {"id": _request_id()}, hub="tunnels")
_declare("tunnel_data", (NODE, SERVER), {"id": _request_id(), "data": _payload()}, hub="tunnels")
_declare("tunnel_closed", (NODE,), {"id": _request_id(), "message": _text()}, hub="tunnels")
_declare("update_state", (NODE,), {
    "id": _request_id(), "state": Enum(UPDATE_STATES, required=True), "message": _text(),
}, hub="updates")

# A supervised demo's install (each state change) and its run state (each change): not replies to a
# request id, so no hub.
_declare("demo_install", (NODE,), {
    "demo": Str(pattern=NAME_PATTERN, required=True),
    # Any text: a push entry the node could not read is answered with its version cut to 64 characters.
    "version": Str(max_len=MAX_DEMO_VERSION_CHARS, required=True),
    "rollout": Str(max_len=MAX_ROLLOUT_CHARS, nullable=True),
    "state": Enum(DEMO_INSTALL_STATES, required=True),
    "message": _text(2000),
    # Download progress (downloading only).
    "bytes": Int(min=0, max=MAX_INT, default=OMIT),
    "total": Int(min=0, max=MAX_INT, default=OMIT),
})
_declare("demo_status", (NODE,), {
    "demo": Str(pattern=NAME_PATTERN, required=True),
    "version": Str(max_len=MAX_DEMO_VERSION_CHARS, nullable=True),
    "state": Enum(DEMO_RUN_STATES, required=True),
    "pid": Int(min=0, nullable=True, expects="expected a non-negative integer"),
    "restarts": Int(min=0, max=MAX_INT, default=0),
    "since": Number(nullable=True),
    "last_exit": Object({"code": _int_or_null(), "signal": _int_or_null(), "at": Number(nullable=True)},
                        nullable=True),
    "last_heartbeat": Number(nullable=True),
    "message": _text(1000),
})
# A request this daemon does not implement: it goes to whichever hub owns the id.
_declare("unsupported", (NODE,), {"id": Str(max_len=64, nullable=True, default=""),
                                  "what": Str(max_len=64, nullable=True, default="")})

# -- server -> node ----------------------------------------------------------------------------------
_declare("welcome", (SERVER,), {
    "protocol": Int(required=True), "node_id": Str(required=True), "name": Str(required=True),
    "settings": Object({"interval": Number(above=0, required=True), "keepalive_interval": Number(above=0),
                        "max_batch": Int(min=1, max=MAX_BATCH_LINES)}, required=True),
    "last_seq": Int(min=0, required=True), "server_time": Number(required=True),
})
_declare("ack", (SERVER,), {"seq": Int(min=0, required=True)})
_declare("error", (SERVER,), {"code": Str(required=True), "message": Str(required=True)})
_declare("exec", (SERVER,), {
    "id": _request_id(), "argv": Array(Str(), min_items=1, nullable=True), "shell": Str(nullable=True),
    "timeout": Number(above=0, required=True), "cap": Int(min=0, required=True),
})
_declare("cancel", (SERVER,), {"id": _request_id()})
_declare("shell_open", (SERVER,), {
    "id": _request_id(), "cols": Int(min=1, max=1000, required=True), "rows": Int(min=1, max=1000, required=True),
    "term": Str(max_len=64),
})
_declare("shell_input", (SERVER,), {"id": _request_id(), "data": _payload()})
_declare("shell_resize", (SERVER,), {
    "id": _request_id(), "cols": Int(min=1, max=1000, required=True), "rows": Int(min=1, max=1000, required=True),
})
_declare("shell_close", (SERVER,), {"id": _request_id()})
_declare("tunnel_open", (SERVER,), {
    "id": _request_id(), "host": Str(min_len=1, max_len=253, required=True),
    "port": Int(min=1, max=65535, required=True),
})
_declare("tunnel_close", (SERVER,), {"id": _request_id()})
_declare("action", (SERVER,), {
    "id": _request_id(), "action": Enum([a for a in ACTIONS if a != "update"], required=True),
    "demo": Str(nullable=True),
})
_declare("update", (SERVER,), {
    "id": _request_id(), "version": Str(required=True), "url": Str(required=True),
    "sha256": Str(required=True), "signature": Str(required=True), "endorsements": Array(Json(json_kind="object")),
})

DESIRED_DEMO = Object({
    "name": Str(pattern=NAME_PATTERN, required=True),
    "version": Str(pattern=DEMO_VERSION, required=True),
    "sha256": Str(pattern=SHA256_HEX, required=True),
    "size": Int(min=1, max=MAX_RELEASE_BYTES, required=True),
    "url": Str(min_len=1, max_len=2048, required=True),
    "manifest": Json(json_kind="object", required=True, doc="the release's dvic-demo.toml as JSON"),
    "rollout": Str(max_len=MAX_ROLLOUT_CHARS, nullable=True),
    "max_unpacked_bytes": Int(min=1, default=OMIT),
    "max_members": Int(min=1, default=OMIT),
})
# The complete set of supervised demos the node should run (an empty list removes them all).
_declare("demos_desired", (SERVER,), {
    "id": _request_id(), "demos": Array(DESIRED_DEMO, max_items=MAX_DESIRED_DEMOS, required=True),
})


# -- the keep-alive body (section 3): POST /api/v1/keepalive ----------------------------------------
MAX_KEEPALIVE_BYTES = 64 * 1024  # 4 KiB were plenty until boards sent their log lines with it (docs/esp32.md)
KEEPALIVE_METRICS = ("uptime", "free_mem", "rssi", "cpu", "temp")
KEEPALIVE_LOGS_VERSION = 1


def _gap_in_order(gap: dict[str, Any]) -> None:
    if gap["last_seq"] < gap["first_seq"]:
        raise SchemaError(f"logs.gap.last_seq: expected an integer from {gap['first_seq']} to {MAX_INT}")


KEEPALIVE_LINE = Object({
    "seq": Int(min=1, max=MAX_INT, required=True),
    "ms": Int(min=0, max=MAX_INT, required=True, doc="the board's uptime in ms when it logged the line"),
    "level": Enum(LEVELS, required=True),
    "msg": Str(required=True, max_bytes=MAX_MSG_BYTES, marks="truncated"),
    "truncated": Bool(coerce=True, default=False),
})
KEEPALIVE = Object({
    **{name: _metric(nullable=True, default=OMIT) for name in KEEPALIVE_METRICS},
    "firmware": Str(max_len=MAX_FACT_CHARS, nullable=True, default=OMIT,
                    expects=f"expected a string of at most {MAX_FACT_CHARS} characters"),
    # An ESP32 board's log lines (docs/esp32.md).
    "logs": Object({
        "v": Int(min=KEEPALIVE_LOGS_VERSION, max=KEEPALIVE_LOGS_VERSION, required=True,
                 message=f"logs.v: version {{raw}} is not supported (this server reads {KEEPALIVE_LOGS_VERSION})"),
        "token": Str(min_len=1, max_len=64, required=True,
                     expects="expected a string of 1 to 64 characters (the board's boot token)"),
        "name": Str(max_len=256, default="", expects="expected a string of at most 256 characters"),
        "now_ms": Int(min=0, max=MAX_INT, required=True, doc="the board's uptime in ms when it sent the body"),
        "lines": Array(KEEPALIVE_LINE, max_items=MAX_BATCH_LINES, default=[],
                       expects=f"expected a list of at most {MAX_BATCH_LINES} lines"),
        "gap": Object({"first_seq": Int(min=1, max=MAX_INT, required=True),
                       "last_seq": Int(min=1, max=MAX_INT, required=True)},
                      checks=[_gap_in_order], nullable=True),
    }, nullable=True),
}, expects="expected a JSON object")
