"""Each kind of channel against a real receiver: what arrives, the webhook's signature, ntfy's
priority and tags, the chat formats, e-mail over STARTTLS / implicit TLS with AUTH, and the
errors an operator sees when a receiver or an SMTP server says no."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from central.alerts.channels.message import Message, channel_test_message
from central.alerts.channels.send import DeliveryFailed, Transport
from central.alerts.channels.spec import parse_channel
from tests.support.receivers import HttpReceiver, tls_for_tests

from .helpers import notice, smtp_server

SECRET = "s3cret-hmac-key"


def grouped(count: int, **fields: object) -> Message:
    return Message(id=7, kind="firing", notices=tuple(notice(f"pi-{i}", **fields) for i in range(count)),
                   max_lines=5, created=time.time())


async def deliver(channel_kind: str, fields: dict[str, object], message: Message, timeout: float = 5.0) -> str:
    transport = Transport(timeout=timeout)
    try:
        return await transport.deliver(parse_channel("ch", channel_kind, fields), message)
    finally:
        await transport.close()


def verify(secret: str, headers: dict[str, str], body: bytes, now: float, tolerance: float = 300) -> bool:
    """What docs/alerts.md tells a receiver to do, written independently of the server's code."""
    timestamp = headers["X-DVIC-Timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-DVIC-Signature"])


async def test_webhook_body_is_signed_and_verifiable(receiver: HttpReceiver) -> None:
    answer = await deliver("webhook", {"url": receiver.url + "/hook?x=1", "secret": SECRET}, grouped(30))
    assert answer == "HTTP 200 ok"
    [got] = receiver.requests
    assert got.path == "/hook?x=1" and got.headers["Content-Type"] == "application/json"
    assert verify(SECRET, got.headers, got.body, time.time())
    assert not verify("another secret", got.headers, got.body, time.time())
    assert not verify(SECRET, got.headers, got.body + b" ", time.time())  # a changed body
    assert not verify(SECRET, got.headers, got.body, time.time() + 3600)  # a replay an hour later
    body = got.json()
    assert body["kind"] == "firing" and body["count"] == 30 and len(body["alerts"]) == 30  # all, not only 5
    assert body["id"] == 7 and got.headers["X-DVIC-Delivery"] == "7"
    assert body["title"] == "FIRING (critical): 30 alerts, node_offline in hall-a"
    assert body["text"].splitlines()[-1] == "and 25 more"
    assert body["alerts"][0]["subject"] == "node:pi-0" and body["alerts"][0]["notice"] == "firing"


async def test_webhook_without_secret_is_not_signed(receiver: HttpReceiver) -> None:
    await deliver("webhook", {"url": receiver.url}, grouped(1))
    [got] = receiver.requests
    assert "X-DVIC-Signature" not in got.headers and "X-DVIC-Timestamp" not in got.headers


async def test_ntfy_json_publish_with_priority_and_tags(receiver: HttpReceiver) -> None:
    await deliver("ntfy", {"url": receiver.url + "/lab-alerts", "token": "tk_abc"}, grouped(2, severity="warning"))
    resolved = Message(id=8, kind="resolved", notices=(notice("pi-1", "resolved", severity="critical"),))
    await deliver("ntfy", {"url": receiver.url + "/lab-alerts"}, resolved)
    first, second = receiver.requests
    assert first.path == "/" and first.headers["Authorization"] == "Bearer tk_abc"
    body = first.json()
    assert body["topic"] == "lab-alerts" and body["priority"] == 4 and body["tags"] == ["warning", "warning"]
    assert body["title"] == "FIRING (warning): 2 alerts, node_offline in hall-a"
    assert body["message"].splitlines() == ["pi-0 offline for 95 s (node:pi-0, group hall-a)",
                                            "pi-1 offline for 95 s (node:pi-1, group hall-a)"]
    assert "Authorization" not in second.headers
    assert second.json()["priority"] == 2 and second.json()["tags"][0] == "white_check_mark"


async def test_critical_ntfy_is_urgent(receiver: HttpReceiver) -> None:
    await deliver("ntfy", {"url": receiver.url + "/t"}, grouped(1))
    assert receiver.requests[0].json()["priority"] == 5


async def test_slack_mattermost_discord_formats(receiver: HttpReceiver) -> None:
    hostile = Message(id=9, kind="firing", notices=(
        notice("pi-1", summary="<!channel> @all disk *full* on pi-1"),))
    for kind in ("slack", "mattermost", "discord"):
        await deliver(kind, {"url": f"{receiver.url}/{kind}/T0/B0/XYZ"}, hostile)
    slack, mattermost, discord = (r.json() for r in receiver.requests)
    assert slack["text"].startswith("*FIRING (critical): &lt;!channel&gt; @all disk *full* on pi-1*\n")
    assert "<!channel>" not in json.dumps(slack)
    assert "@all" not in mattermost["text"] and "@\u200ball" in mattermost["text"]
    assert "\\*full\\*" in mattermost["text"]
    [embed] = discord["embeds"]
    assert embed["title"].startswith("FIRING (critical)") and embed["color"] == 0xD7263D
    assert discord["allowed_mentions"] == {"parse": []}


async def test_webhook_https_with_the_labs_own_ca(tmp_path: Path) -> None:
    ca_pem, server_ssl = tls_for_tests(tmp_path / "tls")
    with HttpReceiver(server_ssl) as receiver:
        url = f"https://localhost:{receiver.port}/hook"
        assert await deliver("webhook", {"url": url, "ca_pem": ca_pem}, grouped(1)) == "HTTP 200 ok"
        with pytest.raises(DeliveryFailed, match="TLS certificate not trusted"):
            await deliver("webhook", {"url": url}, grouped(1))


@pytest.mark.parametrize(("mode", "expected", "permanent"), [
    ("fail", r"answered HTTP 500 receiver broken", False),
    ("hang", r"gave no answer within 0.5 s", False),
    ("close", r"closed the connection", False),
])
async def test_http_failures_are_explained(receiver: HttpReceiver, mode: str, expected: str, permanent: bool) -> None:
    receiver.mode = mode
    with pytest.raises(DeliveryFailed, match=expected) as caught:
        await deliver("webhook", {"url": receiver.url + "/secret-token-path"}, grouped(1), timeout=0.5)
    assert caught.value.permanent is permanent
    assert "secret-token-path" not in caught.value.message  # the URL's path may be a token


async def test_receiver_down_is_explained(receiver: HttpReceiver) -> None:
    receiver.stop()
    with pytest.raises(DeliveryFailed, match=r"cannot connect to http://127.0.0.1:\d+/…"):
        await deliver("slack", {"url": receiver.url + "/services/T/B/X"}, grouped(1))


async def test_email_over_starttls_with_auth(tmp_path: Path) -> None:
    with smtp_server(tmp_path, "starttls", {"alice": "pw-1"}) as server:
        fields = {"host": "localhost", "port": server.port, "security": "starttls", "to": ["ops@lab.test"],
                  "from": "dvic@lab.test", "user": "alice", "password": "pw-1", "ca_pem": server.ca_pem}
        answer = await deliver("smtp", fields, grouped(25))
        assert answer.startswith("250 2.0.0 queued as test")
        [mail] = server.inbox
        assert mail.login == "alice" and mail.sender == "dvic@lab.test" and mail.recipients == ["ops@lab.test"]
        email = mail.message()
        assert email["Subject"] == "[DVIC] FIRING (critical): 25 alerts, node_offline in hall-a"
        assert email["Auto-Submitted"] == "auto-generated" and email["To"] == "ops@lab.test"
        body = email.get_content()
        assert "pi-0 offline for 95 s (node:pi-0, group hall-a)" in body and "and 20 more" in body


async def test_email_text_in_any_language_is_7bit_on_the_wire(tmp_path: Path) -> None:
    with smtp_server(tmp_path, "plain") as server:
        message = Message(id=3, kind="firing", notices=(notice("pi-1", summary="température 85 °C — 日本"),))
        await deliver("smtp", {"host": "127.0.0.1", "port": server.port, "to": "ops@lab.test", "security": "plain"},
                      message)
        [mail] = server.inbox
        assert mail.data.isascii()
        email = mail.message()
        assert email["Subject"] == "[DVIC] FIRING (critical): température 85 °C — 日本"
        assert email.get_content().startswith("température 85 °C — 日本 (node:pi-1, group hall-a)")


async def test_email_over_implicit_tls(tmp_path: Path) -> None:
    with smtp_server(tmp_path, "tls", {"bob": "pw-2"}) as server:
        fields = {"host": "127.0.0.1", "port": server.port, "security": "tls", "to": "ops@lab.test",
                  "user": "bob", "password": "pw-2", "ca_pem": server.ca_pem}
        await deliver("smtp", fields, channel_test_message())
        [mail] = server.inbox
        assert mail.login == "bob" and mail.message()["Subject"] == "[DVIC] TEST: DVIC notification test"


async def test_smtp_refusing_auth_is_a_clear_permanent_error(tmp_path: Path) -> None:
    with smtp_server(tmp_path, "starttls", {"alice": "right"}) as server:
        fields = {"host": "127.0.0.1", "port": server.port, "to": "ops@lab.test", "user": "alice",
                  "password": "wrong", "ca_pem": server.ca_pem}
        with pytest.raises(DeliveryFailed) as caught:
            await deliver("smtp", fields, channel_test_message())
        assert caught.value.permanent
        assert caught.value.message.startswith(f"SMTP server 127.0.0.1:{server.port} refused the login of user 'alice': 535")
        assert "wrong" not in caught.value.message and server.inbox == []


async def test_smtp_without_starttls_is_refused_not_sent_in_clear(tmp_path: Path) -> None:
    with smtp_server(tmp_path, "plain") as server:
        fields = {"host": "127.0.0.1", "port": server.port, "to": "ops@lab.test", "security": "starttls"}
        with pytest.raises(DeliveryFailed, match="does not offer STARTTLS"):
            await deliver("smtp", fields, channel_test_message())
        fields["security"] = "plain"  # a relay on the lab's network, chosen explicitly
        assert (await deliver("smtp", fields, channel_test_message())).startswith("250")


async def test_smtp_untrusted_certificate_and_down_server(tmp_path: Path) -> None:
    with smtp_server(tmp_path, "starttls") as server:
        port = server.port
        with pytest.raises(DeliveryFailed, match="TLS certificate not trusted"):
            await deliver("smtp", {"host": "127.0.0.1", "port": port, "to": "ops@lab.test"}, channel_test_message())
    with pytest.raises(DeliveryFailed, match=f"cannot connect to SMTP server 127.0.0.1:{port}: connection refused"):
        await deliver("smtp", {"host": "127.0.0.1", "port": port, "to": "ops@lab.test"}, channel_test_message())
