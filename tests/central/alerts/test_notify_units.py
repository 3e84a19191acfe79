"""The plain parts of notifications: channel definitions refused with their reason, secrets kept
out of the public view, routing, message titles and lines, the backoff schedule."""

from __future__ import annotations

import pytest

from central.alerts.channels.message import Message, clean
from central.alerts.channels.spec import ChannelInvalid, parse_channel, redact_url
from central.alerts.dispatcher import retry_delay
from central.alerts.routing import Route, targets
from central.config import Notify

from .helpers import alert, notice


@pytest.mark.parametrize(("kind", "fields", "code", "message"), [
    ("webhook", {"url": "ftp://x/y"}, "bad_url", "must start with http:// or https:// (got 'ftp')"),
    ("webhook", {"url": "file:///etc/passwd"}, "bad_url", "must start with http:// or https:// (got 'file')"),
    ("webhook", {"url": "hooks.example/x"}, "bad_url", "must start with http:// or https://"),
    ("webhook", {"url": "https:///path"}, "bad_url", "has no host"),
    ("webhook", {"url": "https://h:99999/"}, "bad_url", "port is not a number from 1 to 65535"),
    ("webhook", {"url": "https://h/a b"}, "bad_url", "spaces or control characters"),
    ("webhook", {}, "bad_url", "needs a URL"),
    ("slack", {"url": "https://h/x", "secret": "s"}, "bad_field", "slack channels take no secret"),
    ("ntfy", {"url": "https://ntfy.example/"}, "bad_url", "ends with the topic"),
    ("ntfy", {"url": "https://ntfy.example/t?x=1"}, "bad_url", "without '?' or '#'"),
    ("webhook", {"url": "https://h/", "ca_pem": "nope"}, "bad_ca", "PEM certificates"),
    ("smtp", {"host": "mail", "to": []}, "bad_address", "needs 1 to 20 recipients"),
    ("smtp", {"host": "mail", "to": "a@b.c\r\nBcc: x@y.z"}, "bad_address", "not a plain e-mail address"),
    ("smtp", {"host": "mail", "to": "a@b.c", "port": 0}, "bad_port", "from 1 to 65535"),
    ("smtp", {"host": "mail x", "to": "a@b.c"}, "bad_host", "not a host name"),
    ("smtp", {"host": "mail", "to": "a@b.c", "user": "u"}, "bad_field", "both a user and a password"),
    ("smtp", {"host": "mail", "to": "a@b.c", "user": "u", "password": "p", "security": "plain"},
     "insecure_auth", "without TLS"),
    ("smtp", {"host": "mail", "to": "a@b.c", "security": "ssl"}, "bad_field", "starttls, tls, plain"),
    ("pager", {}, "bad_kind", "unknown channel kind 'pager'"),
])
def test_bad_channels_are_refused_with_the_reason(kind: str, fields: dict[str, object], code: str,
                                                  message: str) -> None:
    with pytest.raises(ChannelInvalid) as caught:
        parse_channel("ops", kind, fields)
    assert caught.value.code == code and message in caught.value.message


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é"])
def test_bad_channel_names(name: str) -> None:
    with pytest.raises(ChannelInvalid, match="channel name"):
        parse_channel(name, "webhook", {"url": "https://h/"})


def test_public_view_holds_no_secret() -> None:
    slack = parse_channel("chat", "slack", {"url": "https://hooks.slack.test/services/T0/B0/SECRETTOKEN"})
    hook = parse_channel("hook", "webhook", {"url": "https://u:pw@h.test:8443/p?token=SECRETTOKEN", "secret": "HMACKEY"})
    mail = parse_channel("mail", "smtp", {"host": "mail.test", "to": ["a@b.test"], "user": "u", "password": "PASSWORD"})
    views = [c.public() for c in (slack, hook, mail)]
    assert "SECRET" not in repr(views) and "HMACKEY" not in repr(views) and "PASSWORD" not in repr(views)
    assert views[0] == {"name": "chat", "kind": "slack", "url": "https://hooks.slack.test/…", "custom_ca": False,
                        "secrets": []}
    assert views[1]["url"] == "https://h.test:8443/…" and views[1]["signed"] and views[1]["secrets"] == ["secret"]
    assert views[2]["port"] == 587 and views[2]["security"] == "starttls" and views[2]["secrets"] == ["password"]
    assert views[2]["from"] == "dvic@mail.test"


def test_redact_url() -> None:
    assert redact_url("http://[::1]:8080/") == "http://[::1]:8080/"
    assert redact_url("HTTPS://Host.test?x=1") == "https://host.test/…"


def test_routing() -> None:
    hall = alert(group="hall-a", severity="warning")
    nogroup = alert(group=None, severity="info")
    assert targets(hall, [], ["a", "b"]) == {"a": "all", "b": "all"}
    routes = [Route(1, "*", "*", "a"), Route(2, "hall-a", "*", "a"), Route(3, "*", "critical", "b"),
              Route(4, "", "*", "c")]
    assert targets(hall, routes, ["a", "b", "c"]) == {"a": "route2"}  # the most specific route of a
    assert targets(nogroup, routes, ["a", "b", "c"]) == {"a": "route1", "c": "route4"}
    assert targets(alert(group="x", severity="critical"), routes, []) == {"a": "route1", "b": "route3"}


def test_message_titles_and_lines() -> None:
    one = Message(1, "resolved", (notice("pi-1", "resolved", severity="warning"),))
    assert one.title == "RESOLVED (warning): pi-1 offline for 95 s"
    mixed = Message(2, "firing", (notice("pi-1", severity="warning"), notice("pi-2", group="hall-b", rule="disk_full")),
                    max_lines=1)
    assert mixed.title == "FIRING (critical): 2 alerts"
    assert mixed.text() == "pi-1 offline for 95 s (node:pi-1, group hall-a)\nand 1 more"
    assert clean("a\r\nBcc: x\x1b[31m\u2028b") == "a Bcc: x [31m b"
    assert len(clean("x" * 1000)) == 300


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = Notify(backoff=2.0, backoff_max=10.0)
    delays = [retry_delay(settings, n) for n in range(1, 6)]
    for delay, base in zip(delays, [2, 4, 8, 10, 10], strict=True):
        assert base * 0.9 <= delay <= base * 1.1


def test_server_options_reach_the_dispatcher_settings() -> None:
    from central.cli import build_config, build_parser

    args = build_parser().parse_args([
        "serve", "--notify-group-window", "30", "--notify-group-quiet", "5", "--notify-max-lines", "7",
        "--notify-attempts", "3", "--notify-backoff", "0.5", "--notify-timeout", "4", "--notify-per-channel", "1"])
    assert build_config(args).notify == Notify(group_window=30, group_quiet=5, max_lines=7, attempts=3, backoff=0.5,
                                               timeout=4, per_channel=1)
    assert build_config(build_parser().parse_args(["serve"])).notify == Notify()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--notify-attempts", "0"])
