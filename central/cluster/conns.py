"""The per-address connection counts shared between replicas (issue 18; docs/architecture.md
"Several replicas: limits").

`--max-connections-per-address` bounds the connections one client address holds without a node
certificate (central/listener.py `ConnectionGuard`; nodes are exempt: a lab's nodes often share one
NAT address). Behind a balancer each replica counted only its own, so an address held the bound
on every replica. A balancer cannot count for us: with TLS passed through it cannot tell a node's
connection (its certificate is inside the handshake) from an anonymous one.

So each replica tells the others how many such connections each address holds on it, and adds
theirs to its own when it admits one:
- only addresses that hold connections are known: a replica sends an address's new count (0 when
  its last connection closed) in the next `dvic_events` message of its outbox (30 ms), the counts
  of all addresses that changed meanwhile, never one message per connection;
- every such message carries a digest of all the sender's counts (a sum of a hash per address and
  count, kept as counts change), so a receiver that lost a message, or heard a replica restarted
  under the same name, sees its copy differ and asks the sender for all its counts (bus request
  `conn_counts`); the heartbeat brings the digest every second even when nothing changes;
- a replica gone (silent for 3 s, or said it stops: shared presence) holds no connections: its
  counts are dropped at once; the clients reconnect elsewhere and are counted there.

Replicas admitting connections from one address at the same moment hear of each other within one
outbox window: the bound can be passed by what the replicas admit in that window (each still
admits no more than the bound alone); later connections are refused until it holds again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from typing import Any

from .fanout import EVENTS
from .pgbus import BusError, NoReply
from .presence import Presence
from .replica import ReplicaBus

log = logging.getLogger(__name__)

REQUEST = "conn_counts"
_MASK = (1 << 64) - 1


def _term(address: str, count: int) -> int:
    """One address's part of a digest (0 for no connection)."""
    if count <= 0:
        return 0
    return int.from_bytes(hashlib.blake2b(f"{address}={count}".encode(), digest_size=8).digest(), "big")


class Counts:
    """Connections per address, with the digest of them all kept as they change."""

    def __init__(self) -> None:
        self.by_address: dict[str, int] = {}
        self.digest = 0

    def set(self, address: str, count: int) -> int:
        """Set one address's count; returns the change."""
        old = self.by_address.get(address, 0)
        if count == old:
            return 0
        self.digest = (self.digest - _term(address, old) + _term(address, count)) & _MASK
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)
        return count - old


class SharedConnections:
    """This replica's side of the shared per-address counts; see the module's docstring."""

    def __init__(self, bus: ReplicaBus, presence: Presence) -> None:
        self.bus = bus
        self.replica = bus.replica
        self.presence = presence
        self.mine = Counts()
        self._changed: dict[str, None] = {}
        self._theirs: dict[str, Counts] = {}  # replica -> its counts as last heard
        self._elsewhere: Counter[str] = Counter()  # address -> sum over the other live replicas
        self._asking: dict[str, asyncio.Task[None]] = {}
        self.resyncs = 0
        bus.subscribe(EVENTS, self._on_events)
        bus.responder(REQUEST, lambda _body: self._all_mine())
        presence.outbox.parts.append(self._outgoing)
        presence.peer_observers.append(self._peer_gone)

    # -- the listener's side (ConnectionGuard) ----------------------------------------------------
    def elsewhere(self, address: str) -> int:
        """Connections `address` holds on the other live replicas (as last heard)."""
        return self._elsewhere.get(address, 0)

    def changed(self, address: str, count: int) -> None:
        """`address` now holds `count` counted connections here."""
        if self.mine.set(address, count):
            self._changed[address] = None
            self.presence.outbox.poke()

    async def close(self) -> None:
        for task in self._asking.values():
            task.cancel()

    # -- what goes out ----------------------------------------------------------------------------
    def _outgoing(self, beat: bool) -> dict[str, Any]:
        """The part of an outbox message: the counts that changed, and the digest of all (always
        with a heartbeat, so a receiver that lost something notices within a second)."""
        if not self._changed and not beat:
            return {}
        changed, self._changed = self._changed, {}
        counts = {address: self.mine.by_address.get(address, 0) for address in changed}
        return {"conns": {"d": counts, "h": f"{self.mine.digest:x}"}}

    def _all_mine(self) -> dict[str, Any]:
        return {"counts": dict(self.mine.by_address), "h": f"{self.mine.digest:x}"}

    # -- what comes in ----------------------------------------------------------------------------
    def _on_events(self, message: dict[str, Any]) -> None:
        sender = str(message.get("from") or "")
        conns = message.get("conns")
        if not sender or sender == self.replica or not isinstance(conns, dict):
            return
        peer = self.presence.peers.get(sender)
        if peer is None or peer.gone or message.get("stopping"):
            return  # (presence hears it first: a replica it counts gone holds nothing)
        theirs = self._theirs.setdefault(sender, Counts())
        for address, count in (conns.get("d") or {}).items():
            self._set(theirs, str(address), int(count))
        if f"{theirs.digest:x}" != conns.get("h"):
            self._ask_all(sender)

    def _set(self, theirs: Counts, address: str, count: int) -> None:
        change = theirs.set(address, count)
        if change:
            self._elsewhere[address] += change
            if self._elsewhere[address] <= 0:
                del self._elsewhere[address]

    def _ask_all(self, sender: str) -> None:
        """Our copy of `sender`'s counts differs from its digest: ask it for all of them."""
        if sender in self._asking:
            return
        task = asyncio.get_running_loop().create_task(self._resync(sender), name=f"dvic-conns-{sender}")
        self._asking[sender] = task
        task.add_done_callback(lambda _t: self._asking.pop(sender, None))

    async def _resync(self, sender: str) -> None:
        try:
            answer = await self.bus.request(sender, REQUEST, {})
        except (NoReply, BusError) as exc:  # the next digest that differs asks again
            log.info("replica %s: replica %s's connection counts not read again: %s", self.replica, sender, exc)
            return
        peer = self.presence.peers.get(sender)
        if peer is None or peer.gone:
            return
        self.resyncs += 1
        counts = {str(a): int(c) for a, c in (answer.get("counts") or {}).items()}
        theirs = self._theirs.setdefault(sender, Counts())
        for address in list(theirs.by_address):
            if address not in counts:
                self._set(theirs, address, 0)
        for address, count in counts.items():
            self._set(theirs, address, count)
        log.info("replica %s: read replica %s's connection counts again: %d address(es) hold some",
                 self.replica, sender, len(counts))

    def _peer_gone(self, name: str) -> None:
        """A replica gone holds no connections."""
        theirs = self._theirs.pop(name, None)
        if theirs is None:
            return
        for address, count in theirs.by_address.items():
            self._elsewhere[address] -= count
            if self._elsewhere[address] <= 0:
                del self._elsewhere[address]
