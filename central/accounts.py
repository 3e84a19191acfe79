"""Account rules beyond store.py's rows: registration codes and limits, token expiry and last use,
deleting an account, and who enrolled a node (schema step 5, docs/security.md).

The rows are written by store.py (`WriteFn`s for the one writer) and read by queries.py (over the
read-only connection); the routes reach those functions through this module's names too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import deque

from aiohttp import web

from .cluster.attempts import Budget, Full, SharedAttempts
from .queries import enrolled_by as enrolled_by
from .queries import pending_count as pending_count
from .queries import registration as registration
from .queries import registrations as registrations
from .queries import token_owner as token_owner
from .queries import token_summaries as token_summaries
from .store import add_registration as add_registration
from .store import delete_operator as delete_operator
from .store import drop_registration as drop_registration
from .store import set_enrolled_by as set_enrolled_by
from .store import set_token_expiry as set_token_expiry
from .store import touch_token as touch_token

# 2-32 characters; `fullmatch`, because `$` in `re.match` also matches before a final newline.
OPERATOR_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,31}")
OPERATOR_NAME_RULE = "name: 2-32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
# No 0/O, 1/I/L: the code is read out loud or copied from a chat.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
# How often a token's last use is written at most: a write per request would double the writes.
LAST_USE_RESOLUTION_S = 60.0
# The registration budgets' names in the shared count (central/cluster/attempts.py).
REGISTER_SCOPE = "register"
REGISTERED_SCOPE = "registered"
# Longest expiry an operator token may be given at creation (ten years: "never" is no expiry).
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400.0


def valid_operator_name(name: object) -> bool:
    return isinstance(name, str) and OPERATOR_NAME.fullmatch(name) is not None


# -- registration codes ----------------------------------------------------------------------
def new_code() -> str:
    """A one-time code such as `K7QM-3XPA` (40 bits), shown once to the person registering."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:4]}-{raw[4:]}"


def hash_code(code: str) -> str:
    """Hash of a code as typed: case, spaces and dashes do not matter."""
    normal = re.sub(r"[\s-]", "", code).upper()
    return hashlib.sha256(normal.encode()).hexdigest()


def code_matches(code: str, code_hash: str) -> bool:
    return hmac.compare_digest(hash_code(code), code_hash)


class SlidingLimit:
    """At most `limit` events per `window` seconds, per key (a client address) or for one key ("")."""

    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float:
        """0 when one more event is allowed now, else the seconds until it is."""
        events = self._events.get(key)
        if events is None:
            return 0.0
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) < self.limit:
            return 0.0
        return max(events[0] + self.window - now, 1.0)

    def add(self, key: str, now: float) -> None:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._forget_idle(now)
            events = self._events[key] = deque(maxlen=max(self.limit, 1))
        events.append(now)

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, ev in self._events.items() if not ev or ev[-1] <= now - self.window]
        for key in idle:
            del self._events[key]
        if len(self._events) >= self.max_keys:
            # Every key is busy (a flood from many addresses): the oldest go; the total limit holds.
            for key in list(self._events)[: len(self._events) // 2]:
                del self._events[key]


class RegistrationGate:
    """Self-registration: off unless the server was started with it, then rate-limited.

    Per client address every attempt counts (names cannot be probed quickly); in total only
    accounts actually created count, and the pending accounts waiting for an admin are capped.
    With several replicas (`shared`, on PostgreSQL) the budgets are counted with the others
    (central/cluster/attempts.py): an address gets the same attempts through any number of them.
    """

    WINDOW_S = 3600.0

    def __init__(self, enabled: bool, per_address: int, total: int, max_pending: int) -> None:
        self.enabled = enabled
        self.max_pending = max_pending
        self.per_address = SlidingLimit(per_address, self.WINDOW_S)
        self.total = SlidingLimit(total, self.WINDOW_S)
        self.address_budget = Budget(REGISTER_SCOPE, per_address, self.WINDOW_S)
        self.total_budget = Budget(REGISTERED_SCOPE, total, self.WINDOW_S)
        self.shared: SharedAttempts | None = None

    def attempt(self, remote: str, now: float | None = None) -> float:
        """Counts an attempt from `remote` here; returns 0 when it may proceed, else seconds to wait."""
        now = time.monotonic() if now is None else now
        full = self._full_here(remote, now)
        if full is None:
            self.per_address.add(remote, now)
        return 0.0 if full is None else full.wait

    async def admit(self, remote: str) -> Full | None:
        """Counts an attempt from `remote` (here, and with replicas on all of them): None when it
        may proceed, else the budget that is full and for how long."""
        now = time.monotonic()
        full = self._full_here(remote, now)
        if full is None and self.shared is not None:
            # This replica's own count is a part of the shared one: only what passes it is asked.
            full = await self.shared.take(self.address_budget, remote, also=[(self.total_budget, "")])
        if full is None:
            self.per_address.add(remote, now)
        return full

    def _full_here(self, remote: str, now: float) -> Full | None:
        full = max(Full(self.address_budget, self.per_address.retry_after(remote, now)),
                   Full(self.total_budget, self.total.retry_after("", now)), key=lambda f: f.wait)
        return full if full.wait > 0 else None

    def created(self, now: float | None = None) -> None:
        self.total.add("", time.monotonic() if now is None else now)

    async def count_created(self) -> None:
        """An account was created: counted against the total (with replicas, on all of them)."""
        self.created()
        if self.shared is not None:
            await self.shared.note(self.total_budget, "")


REGISTRATION = web.AppKey("registration", RegistrationGate)


# -- tokens ----------------------------------------------------------------------------------
class LastUse:
    """Which tokens' last use is worth writing now: at most once per LAST_USE_RESOLUTION_S each."""

    def __init__(self, max_tokens: int = 10_000) -> None:
        self.max_tokens = max_tokens
        self._written: dict[str, float] = {}

    def due(self, token_hash: str, stored: float | None, now: float) -> bool:
        last = max(self._written.get(token_hash, 0.0), stored or 0.0)
        if now - last < LAST_USE_RESOLUTION_S:
            return False
        if len(self._written) >= self.max_tokens:
            self._written.clear()  # the stored value still spaces the writes out
        self._written[token_hash] = now
        return True
