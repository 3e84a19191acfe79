"""Enrollment: a new node's UUID, key pair, client certificate and keep-alive token, as one bundle.

The server stores the certificate and the token's hash; the private key and the token exist only in
the returned bundle (docs/protocol.md section 1).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from dvic_core.constants import NAME_PATTERN, NODE_KINDS
from dvic_core.schema import Enum, Object, SchemaError, Str

from . import accounts, store
from .auth import ApiError
from .dbconn import WriteConn, conflicts
from .registry import NodeState
from .services import Services
from .tokens import hash_token, new_token

# A node's name, matched whole (with `re.match`, `$` also matched before a final newline, "pi-1\n").
NAME = NAME_PATTERN
BUNDLE_FORMAT = "dvic-node-bundle/1"

# What an enrollment names: the body of POST /api/v1/nodes, and `dvic-central node add`'s arguments.
NODE_FIELDS = Object({
    "name": Str(pattern=NAME, required=True, code="bad_name",
                message="name: 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"),
    "kind": Enum(NODE_KINDS, default="desktop", code="bad_kind"),
    "group": Str(pattern=f"(?:{NAME})?", default="", code="bad_group",
                 message="group: empty, or 1-63 characters like a name"),
})


def check_node_fields(name: Any, kind: Any, group: Any) -> tuple[str, str, str]:
    """The fields checked by NODE_FIELDS (ApiError 400 bad_name, bad_kind or bad_group)."""
    try:
        fields = NODE_FIELDS.parse({"name": name, "kind": kind, "group": group})
    except SchemaError as exc:
        raise ApiError(exc.status, exc.code or "bad_field", exc.message) from None
    return fields["name"], fields["kind"], fields["group"]


def ever_connected(node: NodeState) -> bool:
    """Whether the node ever reached the server with its identity (a websocket or a keep-alive).

    The registry keeps this: a node leaves the `new` state and gets a `last_seen` on its first
    hello or keep-alive, and both are stored; a socket before its hello counts too.
    """
    return node.liveness != "new" or node.last_seen is not None or node.disconnect is not None


async def enroll_node(services: Services, name: Any, kind: Any = "desktop", group: Any = "",
                      by: str = "") -> dict[str, Any]:
    """Enroll a node; `by` is the operator who asked ("" when enrolled offline from the data dir)."""
    name, kind, group = check_node_fields(name, kind, group)
    existing = services.registry.get(name)
    if existing is not None and not existing.revoked:
        raise ApiError(409, "name_taken", f"a node named {name!r} already exists")
    if existing is not None:
        # A revoked node gives its name up (its history stays, under a suffixed name), so a
        # machine can be enrolled again under the name people know it by.
        await services.registry.rename(existing, f"{name}~revoked-{existing.id[:8]}")
    node_id = str(uuid.uuid4())
    issued = services.ca.issue_node(node_id)
    token = new_token("dvn")
    now = time.time()
    create = store.create_node(node_id, name, kind, group, now, issued.fingerprint, issued.cert_pem,
                               hash_token(token))
    remember_who = accounts.set_enrolled_by(node_id, by)

    def write(conn: WriteConn) -> None:
        create(conn)
        remember_who(conn)

    try:
        await services.writer.submit(write)
    except conflicts():
        raise ApiError(409, "name_taken", f"a node named {name!r} already exists") from None
    node = NodeState(
        id=node_id, name=name, kind=kind, group=group, created_at=now, cert_fp=issued.fingerprint,
        token_hash=hash_token(token), state_since=now,
    )
    services.registry.add(node)
    await services.registry.record_event(node, "enrolled", f"node {name} enrolled" + (f" by {by}" if by else ""),
                                         {"kind": kind, "group": group, "by": by})
    base = services.public_url()
    ws_base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return {
        "format": BUNDLE_FORMAT,
        "node_id": node_id,
        "name": name,
        "kind": kind,
        "group": group,
        "server_url": base,
        "ws_url": f"{ws_base}/api/v1/node/ws",
        "keepalive_url": f"{base}/api/v1/keepalive",
        "ca_pem": services.ca.pem,
        "ca_sha256": services.ca.fingerprint,
        "cert_pem": issued.cert_pem,
        "key_pem": issued.key_pem,
        "token": token,
        "interval": services.config.interval,
        "release_key": services.release.public,
    }
