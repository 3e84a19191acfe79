"""What a notification channel is: its kind, the settings anyone may read and the secrets nobody may.

`parse_channel` turns an operator's fields into a `Channel` or refuses them with a specific reason
(`ChannelInvalid`); `Channel.public()` is the only view the API and the CLI ever show.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from ...errors import BadInput

ChannelKind = Literal["webhook", "ntfy", "slack", "mattermost", "discord", "smtp"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = ("webhook", "ntfy", "slack", "mattermost", "discord", "smtp")
URL_KINDS: tuple[ChannelKind, ...] = ("webhook", "ntfy", "slack", "mattermost", "discord")

SmtpSecurity = Literal["starttls", "tls", "plain"]
SMTP_SECURITY: tuple[SmtpSecurity, ...] = ("starttls", "tls", "plain")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NTFY_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Deliberately plain: one address, no display name, nothing that could end a header line.
EMAIL = re.compile(r"[^@\s<>,;:\"()\[\]\\]+@[A-Za-z0-9.-]+\.?[A-Za-z0-9-]*")
HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
MAX_URL = 2048
MAX_SECRET = 4096
MAX_RECIPIENTS = 20
MAX_CA_PEM = 64 * 1024


class ChannelInvalid(BadInput):
    """An operator's channel definition that cannot work; `code` is the API's error code."""


@dataclass(frozen=True)
class Channel:
    name: str
    kind: ChannelKind
    settings: Mapping[str, Any] = field(default_factory=dict)  # shown to viewers
    secrets: Mapping[str, str] = field(default_factory=dict)   # never leaves the server

    def public(self) -> dict[str, Any]:
        """Everything an operator may see: settings, and which secrets are set (never their value)."""
        view: dict[str, Any] = {"name": self.name, "kind": self.kind}
        view.update({k: v for k, v in self.settings.items() if k != "ca_pem"})
        view["custom_ca"] = bool(self.settings.get("ca_pem"))
        view["secrets"] = sorted(k for k in self.secrets if k != "url")
        return view

    @property
    def url(self) -> str:
        return self.secrets.get("url", "")


def parse_channel(name: Any, kind: Any, fields: Mapping[str, Any]) -> Channel:
    """A channel from an operator's fields, or ChannelInvalid saying what to change."""
    name = _name(name)
    if kind not in CHANNEL_KINDS:
        raise ChannelInvalid("bad_kind", f"unknown channel kind {kind!r}: expected one of {', '.join(CHANNEL_KINDS)}")
    allowed = _ALLOWED[kind]
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ChannelInvalid("bad_field", f"{kind} channels take no {', '.join(unknown)}: "
                                          f"allowed fields are {', '.join(sorted(allowed))}")
    ca_pem = _ca_pem(fields.get("ca_pem"))
    if kind == "smtp":
        return _smtp(name, fields, ca_pem)
    url = check_url(fields.get("url"))
    settings: dict[str, Any] = {"url": redact_url(url)}
    secrets: dict[str, str] = {"url": url}
    if kind == "webhook":
        secret = _optional_secret(fields.get("secret"), "secret")
        if secret:
            secrets["secret"] = secret
        settings["signed"] = bool(secret)
    elif kind == "ntfy":
        ntfy_parts(url)
        token = _optional_secret(fields.get("token"), "token")
        if token:
            secrets["token"] = token
    if ca_pem:
        settings["ca_pem"] = ca_pem
    return Channel(name, kind, settings, secrets)


_COMMON = {"ca_pem"}
_ALLOWED: dict[str, set[str]] = {
    "webhook": {"url", "secret", *_COMMON},
    "ntfy": {"url", "token", *_COMMON},
    "slack": {"url", *_COMMON},
    "mattermost": {"url", *_COMMON},
    "discord": {"url", *_COMMON},
    "smtp": {"host", "port", "to", "from", "user", "password", "security", *_COMMON},
}


def _name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ChannelInvalid("bad_name", f"channel name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                                         "starting with a letter or digit")
    return name


def check_url(url: Any) -> str:
    """An http(s) URL with a host, or ChannelInvalid with the reason."""
    if not isinstance(url, str) or not url:
        raise ChannelInvalid("bad_url", "the channel needs a URL (http:// or https://)")
    if len(url) > MAX_URL:
        raise ChannelInvalid("bad_url", f"the channel URL is longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ChannelInvalid("bad_url", "the channel URL contains spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        got = parts.scheme or url.split("/", 1)[0]
        raise ChannelInvalid("bad_url", f"the channel URL must start with http:// or https:// (got {got!r})")
    if not parts.hostname:
        raise ChannelInvalid("bad_url", f"the channel URL {redact_url(url)!r} has no host")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ChannelInvalid("bad_url", "the channel URL's port is not a number from 1 to 65535") from None
    return url


def redact_url(url: str) -> str:
    """The URL without what may be a credential: user info, path, query (a Slack or Discord
    webhook's path IS its token, an ntfy topic is its password)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    hidden = "/…" if (parts.path.strip("/") or parts.query) else "/"
    return f"{parts.scheme.lower()}://{host}{port}{hidden}"


def ntfy_parts(url: str) -> tuple[str, str]:
    """(server base URL, topic) of an ntfy topic URL such as https://ntfy.example/lab-alerts."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ChannelInvalid("bad_url", "an ntfy URL is the topic's URL, without '?' or '#' "
                                        "(https://ntfy.example/TOPIC)")
    base, _, topic = parts.path.rstrip("/").rpartition("/")
    if not NTFY_TOPIC.fullmatch(topic):
        raise ChannelInvalid("bad_url", "an ntfy URL ends with the topic: https://ntfy.example/TOPIC "
                                        "(letters, digits, '-' and '_', at most 64)")
    return f"{parts.scheme}://{parts.netloc}{base}/", topic


def _optional_secret(value: Any, what: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_SECRET or any(ord(c) < 32 for c in value):
        raise ChannelInvalid("bad_secret", f"the {what} must be text of at most {MAX_SECRET} characters "
                                           "without control characters")
    return value


def _ca_pem(value: Any) -> str:
    """A PEM bundle to trust for this channel's TLS (a lab's own CA), checked by loading it."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_CA_PEM or "BEGIN CERTIFICATE" not in value:
        raise ChannelInvalid("bad_ca", "ca_pem must be PEM certificates (-----BEGIN CERTIFICATE-----)")
    try:
        ssl.create_default_context(cadata=value)
    except (ssl.SSLError, ValueError) as exc:
        raise ChannelInvalid("bad_ca", f"ca_pem could not be loaded: {exc}") from None
    return value


def _smtp(name: str, fields: Mapping[str, Any], ca_pem: str) -> Channel:
    host = fields.get("host")
    if not isinstance(host, str) or not HOST.fullmatch(host):
        raise ChannelInvalid("bad_host", f"SMTP host {host!r} is not a host name or address")
    security = fields.get("security", "starttls")
    if security not in SMTP_SECURITY:
        raise ChannelInvalid("bad_field", f"security must be one of {', '.join(SMTP_SECURITY)}, got {security!r}")
    port = fields.get("port", 465 if security == "tls" else 587)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ChannelInvalid("bad_port", f"SMTP port must be a number from 1 to 65535, got {port!r}")
    to = fields.get("to")
    recipients = [to] if isinstance(to, str) else to
    if not isinstance(recipients, list) or not recipients or len(recipients) > MAX_RECIPIENTS:
        raise ChannelInvalid("bad_address", f"an SMTP channel needs 1 to {MAX_RECIPIENTS} recipients (to)")
    recipients = [_address(a, "to") for a in recipients]
    sender = _address(fields.get("from") or f"dvic@{host.strip('[]')}", "from")
    user = fields.get("user") or ""
    if not isinstance(user, str) or len(user) > 256 or any(ord(c) < 32 for c in user):
        raise ChannelInvalid("bad_field", "the SMTP user must be text of at most 256 characters")
    password = _optional_secret(fields.get("password"), "SMTP password")
    if bool(user) != bool(password):
        raise ChannelInvalid("bad_field", "SMTP AUTH needs both a user and a password (or neither)")
    if user and security == "plain":
        raise ChannelInvalid("insecure_auth", "refusing to send an SMTP password without TLS: "
                                              "use security starttls or tls")
    settings: dict[str, Any] = {"host": host, "port": port, "security": security, "from": sender,
                                "to": recipients, "user": user}
    if ca_pem:
        settings["ca_pem"] = ca_pem
    return Channel(name, "smtp", settings, {"password": password} if password else {})


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 254 or not EMAIL.fullmatch(value):
        raise ChannelInvalid("bad_address", f"{what} address {value!r} is not a plain e-mail address (name@host)")
    return value
