"""The facts of the protocol and the operator API, written once (docs/protocol.md says what they mean).

Plain tuples, dicts and frozensets: imported by `dvic run` at start-up, by the server and by the
installer. node_script/dvic_node.py and lib/python/dvic_log keep copies of the ones they need;
tests/test_constants.py compares those copies with these.
"""

# Node protocol version (`hello.protocol`, `welcome.protocol`).
PROTOCOL_VERSION = 1

# Operator roles, least to most powerful; `pending` (self-registered, not approved) ranks below all.
ROLES = ("viewer", "operator", "admin")
RANK = {"pending": 0, "viewer": 1, "operator": 2, "admin": 3}

# A node's name, matched whole (a group's, a supervised demo's too); the daemon's DEMO_NAME_RE copies it.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"

# A node's state as the server shows it, and the kinds of machine a node can be.
NODE_STATES = ("online", "offline", "maintenance", "failed", "new")
NODE_KINDS = ("desktop", "raspberry", "esp32", "other")

# Log levels, least to most severe, with the numbers the store keeps (Python logging's).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_NUMBERS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
LOG_SOURCES = ("demo", "system", "daemon")
# A demo's state in a node's `demo` message.
DEMO_STATES = ("started", "alive", "exited")

# A command run's final states (docs/protocol.md 4.3): no more output or state change after one.
RUN_FINAL = frozenset({"exited", "timeout", "cancelled", "failed", "duplicate", "offline", "lost", "refused"})
# Tracked actions, the states a node reports for one (`action_state`), and the final states.
ACTIONS = ("reboot", "restart_demo", "stop_demo", "start_demo", "update")
ACTION_STATES = ("in_progress", "done", "failed")
ACTION_FINAL = frozenset({"done", "failed", "lost"})

# Close codes of the node websocket (docs/protocol.md, "Close codes"); CLOSE_TOO_SLOW also ends an
# operator's stream that fell behind.
CLOSE_MALFORMED = 4001
CLOSE_BEFORE_HELLO = 4002
CLOSE_UNKNOWN_TYPE = 4003
CLOSE_BAD_VERSION = 4004
CLOSE_REVOKED = 4403
CLOSE_REPLACED = 4409
CLOSE_TOO_SLOW = 4429
CLOSE_RATE_LIMITED = 4429  # a node far over its limits for a minute (central/nodelimits.py)
CLOSE_STORAGE = 1011  # the server could not store what the node sent: it resends after reconnecting

# Websocket ping intervals, seconds: the server's on node sockets, and on the operator websockets
# (live stream, command stream, shells, tunnels) at both ends.
NODE_HEARTBEAT_S = 10.0
OPERATOR_HEARTBEAT_S = 20.0

# Error codes for refused requests whose answer carries no error of the server's (an old server, a proxy).
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                409: "conflict", 429: "too_many"}
