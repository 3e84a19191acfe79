"""What each kind of receiver is sent: request bodies and headers, and the e-mail (no I/O here).

The generic webhook's signature (docs/alerts.md, "Verifying the webhook signature"):
`X-DVIC-Signature: sha256=HEX` where HEX = HMAC-SHA256(secret, f"{timestamp}." + raw body), and
`X-DVIC-Timestamp` is that timestamp (Unix seconds): a receiver recomputes it, compares in constant
time, and refuses a timestamp too far from its clock, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from ..model import Severity
from .message import Message
from .spec import Channel, ntfy_parts

SIGNATURE_HEADER = "X-DVIC-Signature"
TIMESTAMP_HEADER = "X-DVIC-Timestamp"
DELIVERY_HEADER = "X-DVIC-Delivery"
USER_AGENT = "dvic-central-notify/1"

# ntfy priorities: 5 urgent (phones ring through), 4 high, 3 default, 2 low.
NTFY_PRIORITY: dict[Severity, int] = {"critical": 5, "warning": 4, "info": 3}
NTFY_TAGS: dict[Severity, str] = {"critical": "rotating_light", "warning": "warning", "info": "information_source"}
# Discord embed colours (0xRRGGBB).
COLOUR: dict[str, int] = {"critical": 0xD7263D, "warning": 0xF4A259, "info": 0x3A86FF, "resolved": 0x2A9D8F}
DISCORD_DESCRIPTION = 4096
DISCORD_TITLE = 256


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The value of X-DVIC-Signature for this body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def webhook_request(channel: Channel, message: Message, now: float) -> tuple[bytes, dict[str, str]]:
    body = _dumps(message.as_json())
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: str(message.id)}
    secret = channel.secrets.get("secret")
    if secret:
        timestamp = int(now)
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return body, headers


def ntfy_request(channel: Channel, message: Message) -> tuple[str, bytes, dict[str, str]]:
    """ntfy's JSON publishing (POST to the server's root with the topic in the body): titles and
    text in any language, where ntfy's header form would need them in Latin-1."""
    base, topic = ntfy_parts(channel.url)
    resolved = message.kind == "resolved"
    tags = ["white_check_mark"] if resolved else [NTFY_TAGS[message.severity]]
    tags.append(message.severity)
    body = {
        "topic": topic,
        "title": message.title,
        "message": message.text(),
        "priority": 2 if resolved else NTFY_PRIORITY[message.severity],
        "tags": tags,
    }
    headers = {"Content-Type": "application/json"}
    token = channel.secrets.get("token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return base, _dumps(body), headers


def _slack_escape(text: str) -> str:
    # Slack's three control characters: no <!channel> or <url|label> from a node's text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _no_mentions(text: str) -> str:
    # A zero-width space after '@' keeps "@channel" / "@all" in a node's text from paging everyone.
    return text.replace("@", "@\u200b")


def slack_body(message: Message) -> bytes:
    text = _slack_escape(f"*{message.title}*\n{message.text()}")
    return _dumps({"text": text})


def mattermost_body(message: Message) -> bytes:
    return _dumps({"text": _no_mentions(f"**{_md(message.title)}**\n{_md(message.text())}")})


def _md(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_[]<>#|~" else c for c in text)


def discord_body(message: Message) -> bytes:
    colour = COLOUR["resolved"] if message.kind == "resolved" else COLOUR[message.severity]
    description = message.text()
    if len(description) > DISCORD_DESCRIPTION:
        description = description[: DISCORD_DESCRIPTION - 1] + "…"
    return _dumps({
        "embeds": [{"title": message.title[:DISCORD_TITLE], "description": description, "color": colour}],
        "allowed_mentions": {"parse": []},  # nothing in an alert may ping @everyone or a role
    })


def email_message(channel: Channel, message: Message) -> EmailMessage:
    email = EmailMessage()
    settings = channel.settings
    email["Subject"] = f"[DVIC] {message.title}"
    email["From"] = settings["from"]
    email["To"] = ", ".join(settings["to"])
    email["Date"] = formatdate(localtime=False, usegmt=True)
    email["Message-ID"] = make_msgid("dvic", domain=_domain(str(settings["from"])))
    email["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to alerts
    email["X-DVIC-Notification"] = str(message.id)
    footer = ("\n\n-- \nDVIC Demo Monitor"
              + (f", notification {message.id}" if message.id else "")
              + f"\nSent by {socket.gethostname()}\n")
    # Quoted-printable: 7-bit on the wire, so a relay without 8BITMIME still takes "température".
    email.set_content(message.text() + footer, cte="quoted-printable")
    return email


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"
