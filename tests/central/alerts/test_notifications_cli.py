"""The operator's side of notifications, end to end: a real server, the real `dvic` CLI, real
receivers (HTTP and aiosmtpd). Channels are added, tested, listed without their secrets, routed and
removed; a viewer reads but changes nothing; every change is audited; an SMTP server refusing the
login is a clear error at `dvic channel test`; failed notifications are listed and re-sent."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.cli import DvicRunner, clean_env
from tests.support.receivers import HttpReceiver
from tests.support.server import REPO, CentralServer
from tests.support.wait import async_wait_for, wait_for

from .helpers import smtp_server

SECRET = "hmac-key-0123456789"


@pytest.fixture
def dvic(central_server: CentralServer, tmp_path: Path) -> DvicRunner:
    return DvicRunner(central_server, clean_env(tmp_path))


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


async def test_a_webhook_channel_from_add_to_remove(central_server: CentralServer, dvic: DvicRunner, receiver: HttpReceiver,
                                                    tmp_path: Path) -> None:
    ops, viewer = dvic.operator("ops", "operator"), dvic.operator("eve", "viewer")
    url = f"{receiver.url}/hooks/TOKEN-IN-PATH"
    added = await dvic("channel", "add", "hook", "--webhook", url, "--secret-file",
                       secret_file(tmp_path, "hmac", SECRET), token=ops)
    assert added.code == 0, added.err
    assert added.out == (f"added webhook channel hook: {receiver.url}/…\n"
                         "no routes: every channel receives every notification\n")

    inline = await dvic("channel", "add", "inline", "--webhook", receiver.url, "--secret", "on-the-command-line",
                        token=ops)
    assert inline.code == 0 and "--secret shows the secret to every user of this machine" in inline.err
    assert (await dvic("channel", "remove", "inline", token=ops)).code == 0
    refused = await dvic("channel", "add", "mine", "--webhook", url, token=viewer)
    assert refused.code == 1 and "[forbidden, HTTP 403]" in refused.err
    bad = await dvic("channel", "add", "bad", "--webhook", "ftp://files.lab/x", token=ops)
    assert bad.code == 1
    assert bad.err.splitlines()[-1] == ("dvic: the channel URL must start with http:// or https:// (got 'ftp') "
                                        "[bad_url, HTTP 400]")

    listed = await dvic("channel", "list", "--json", token=viewer)
    [channel] = json.loads(listed.out)["channels"]
    assert channel["name"] == "hook" and channel["signed"] is True and channel["secrets"] == ["secret"]
    assert channel["created_by"] == "ops"
    table = (await dvic("channel", "list", token=viewer)).out
    assert table.splitlines()[1].split() == ["hook", "webhook", f"{receiver.url}/…", "secret"]

    tested = await dvic("channel", "test", "hook", token=ops)
    assert tested.code == 0 and tested.out == "test message delivered to hook: HTTP 200 ok\n"
    [got] = receiver.accepted
    assert got.path == "/hooks/TOKEN-IN-PATH" and got.json()["kind"] == "test"
    signed = got.headers["X-DVIC-Timestamp"].encode() + b"." + got.body
    assert got.headers["X-DVIC-Signature"] == "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()

    route = await dvic("route", "add", "hook", "--group", "hall-a", "--severity", "warning", token=ops)
    assert route.out == ("route 1: hall-a, warning and above -> hook\n"
                         "notifications now go only where a route sends them\n")
    assert (await dvic("route", "list", token=viewer)).out.splitlines()[1].split() == [
        "1", "hall-a", "warning", "and", "above", "hook"]
    assert (await dvic("route", "remove", "1", token=viewer)).code == 1
    assert (await dvic("route", "remove", "1", token=ops)).out == "removed route 1\n"

    removed = await dvic("channel", "remove", "hook", token=ops)
    assert removed.out == "removed channel hook and its routes\n"
    assert (await dvic("channel", "list", token=viewer)).out.startswith("no channels")

    status, audit = central_server.api("GET", "/api/v1/audit?limit=100")
    rows = [(e["operator"], e["action"], e["target"], e["status"]) for e in audit["entries"]]
    assert ("ops", "POST /api/v1/channels/{name}", "name=hook", 201) in rows
    assert ("eve", "POST /api/v1/channels/{name}", "name=mine", 403) in rows
    assert ("ops", "POST /api/v1/channels/{name}/test", "name=hook", 200) in rows
    assert ("ops", "POST /api/v1/channels/{name}/routes", "name=hook", 201) in rows
    assert ("ops", "DELETE /api/v1/channels/{name}", "name=hook", 200) in rows
    # The secret and the URL's token went nowhere an operator or a log reader could see them.
    everything = listed.out + table + json.dumps(audit) + central_server.log()
    assert SECRET not in everything and "TOKEN-IN-PATH" not in everything


async def test_smtp_that_refuses_the_login_is_a_clear_error(central_server: CentralServer, dvic: DvicRunner,
                                                            tmp_path: Path) -> None:
    mail = smtp_server(tmp_path, "starttls", {"alice": "right-password"})
    ca = tmp_path / "smtp-ca.pem"
    ca.write_text(mail.ca_pem)
    try:
        for name, password in (("wrong", "wrong-password"), ("mail", "right-password")):
            added = await dvic("channel", "add", name, "--smtp", f"localhost:{mail.port}", "--to", "ops@lab.test",
                               "--user", "alice", "--password-file", secret_file(tmp_path, name, password),
                               "--starttls", "--channel-ca", str(ca))
            assert added.code == 0, added.err
            assert added.out.startswith(f"added smtp channel {name}: ops@lab.test via localhost:{mail.port} (starttls)")
        refused = await dvic("channel", "test", "wrong")
        assert refused.code == 1
        assert refused.err.splitlines()[-1] == (
            f"dvic: SMTP server localhost:{mail.port} refused the login of user 'alice': 535 5.7.8 "
            "Authentication credentials invalid [delivery_failed, HTTP 502]")
        sent = await dvic("channel", "test", "mail")
        assert sent.code == 0 and sent.out.startswith("test message delivered to mail: 250 ")
        [message] = mail.inbox
        assert message.login == "alice" and message.message()["Subject"] == "[DVIC] TEST: DVIC notification test"
        shown = (await dvic("channel", "list", "--json")).out
        assert "password" in json.loads(shown)["channels"][0]["secrets"] and "right-password" not in shown
    finally:
        mail.close()


@pytest.mark.skipif(postgres.wanted(), reason="the harness queues into the data dir's SQLite file")
async def test_failed_notifications_are_listed_and_resent(tmp_path: Path, receiver: HttpReceiver) -> None:
    data_dir = tmp_path / "central"
    receiver.stop()
    harness = subprocess.Popen(
        [sys.executable, "-m", "tests.central.alerts.notify_harness", str(data_dir), receiver.url + "/hook", "3"],
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert harness.stdout is not None
    assert harness.stdout.readline().strip() == b"submitted"
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    harness.stdout.close()
    server = CentralServer(data_dir, extra_args=("--notify-attempts", "2", "--notify-backoff", "0.1")).start()
    try:
        dvic = DvicRunner(server, clean_env(tmp_path))

        async def failed() -> list[dict[str, object]]:
            doc = json.loads((await dvic("notifications", "--failed", "--json")).out)
            return list(doc["notifications"])
        [row] = await async_wait_for(failed, timeout=20, what="the notification to fail")
        assert row["channel"] == "hook" and row["subjects"] == 3 and row["attempts"] == 2
        assert str(row["last_error"]).startswith("cannot connect to http://127.0.0.1:")
        status, one = server.api("GET", "/api/v1/notifications/1", token=dvic.operator("vic", "viewer"))
        assert status == 200 and [a["subject"] for a in one["alerts"]] == ["node:pi-0", "node:pi-1", "node:pi-2"]
        table = (await dvic("notifications")).out.splitlines()
        assert table[1].split()[:7] == ["1", "failed", "hook", "firing", "critical", "3", "2"]
        assert table[-1] == "pending 0, sent 0, failed 1"
        viewer = dvic.operator("eve", "viewer")
        assert (await dvic("notifications", "resend", "--failed", token=viewer)).code == 1
        receiver.start()
        resent = await dvic("notifications", "resend", "--failed")
        assert resent.out == "queued again: 1\n"
        wait_for(receiver.got, timeout=10, what="the resent notification")
        assert receiver.accepted[0].json()["count"] == 3

        async def sent() -> bool:
            doc = json.loads((await dvic("notifications", "--json")).out)
            return doc["counts"] == {"pending": 0, "sent": 1, "failed": 0}
        await async_wait_for(sent, what="the notification to be recorded as sent")
        again = await dvic("notifications", "resend", "1")
        assert again.out == "queued again: 1\n"
        wait_for(lambda: receiver.got(2), timeout=10, what="a sent notification sent again")
    finally:
        server.stop()
