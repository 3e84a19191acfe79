"""add_node over real SSH (OpenSSH sshd on loopback) into a prefix on this machine, no systemd, with the
real dvic-central (one for the session: each test has its own account and node name) and the real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from installer import (
    STEP_NAMES,
    AddNodeRequest,
    HostKeyPrompt,
    InstallerError,
    Jump,
    Step,
    StepStatus,
    add_node,
)
from installer.flow import daemon_version
from installer.paths import DEFAULT_DAEMON_SOURCE
from tests.support.daemon import enrolled_daemon, online_daemon, wait_connected
from tests.support.wait import wait_for

from .conftest import Central, daemon_pid, tree
from .sshd import Sshd


def _install_dirs(owner: str, age: float) -> Path:
    import pwd
    import tempfile
    import time

    path = Path(tempfile.mkdtemp(prefix="dvic-install.", dir="/tmp"))
    user = pwd.getpwnam(owner)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def _ended(steps: list[Step]) -> list[tuple[str, str]]:
    return [(s.name, s.status.value) for s in steps if s.status != StepStatus.RUNNING]


async def test_direct_install_comes_online(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    reported: list[Step] = []
    request = make_request()
    result = await add_node(request, reported.append)

    assert [s.name for s in result.steps] == list(STEP_NAMES)
    assert all(s.status == StepStatus.OK for s in result.steps), result.steps
    # Each step is reported when it starts and when it ends, in order, with a duration.
    assert [(s.name, s.status.value) for s in reported] == [
        pair for name in STEP_NAMES for pair in ((name, "running"), (name, "ok"))]
    assert all(s.duration > 0 for s in result.steps)
    assert not result.reused_identity
    assert central.node(result.node_id)["state"] == "online"
    assert request.password.wiped

    bundle = prefix / "etc/dvic-node/bundle.json"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert json.loads(bundle.read_text())["node_id"] == result.node_id
    unit = (prefix / "etc/systemd/system/dvic-node.service").read_text()
    assert f"{prefix}/opt/dvic-node/dvic_node.py" in unit and "@" not in unit
    assert daemon_pid(prefix) is not None


async def test_jump_host(
    make_request: Callable[..., AddNodeRequest], central: Central, jump_sshd: Sshd, jump_key: Path,
    prefix: Path,
) -> None:
    source = Jump(host="127.0.0.1", port=jump_sshd.port, user="dvic-it", client_keys=[str(jump_key)],
                  expect_host_key=jump_sshd.fingerprint)
    result = await add_node(make_request(source=source))
    assert central.node(result.node_id)["state"] == "online"
    assert "Accepted publickey for dvic-it" in jump_sshd.log_path.read_text()
    assert daemon_pid(prefix) is not None


async def test_wrong_password_changes_nothing(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    from installer import Password

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(password=Password(b"not-the-password")))
    assert (err.value.step, err.value.code) == ("connect", "auth_failed")
    assert central.requests() == central.audit() == []
    assert tree(prefix) == []


async def test_user_without_sudo_is_told_what_to_do(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    from .conftest import NOSUDO_USER

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(user=NOSUDO_USER))
    assert (err.value.step, err.value.code) == ("check", "not_sudoer")
    assert "sudo" in err.value.hint
    assert central.requests() == central.audit() == [] and tree(prefix) == []


async def test_name_taken_at_the_server(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    from installer.api import CentralClient

    request = make_request()
    async with CentralClient(request.server) as api:
        await api.enroll(central.name, "desktop", "")
    with pytest.raises(InstallerError) as err:
        await add_node(request)
    assert err.value.step == "enroll" and "remove-node" in err.value.hint
    assert central.enrollments() == [201, 409] and len(central.nodes_named()) == 1
    assert tree(prefix) == []


async def test_missing_daemon_file_fails_before_anything(
    make_request: Callable[..., AddNodeRequest], central: Central, tmp_path: Path
) -> None:
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=tmp_path / "nope.py"))
    assert (err.value.step, err.value.code) == ("render", "missing_file")
    assert central.requests() == central.audit() == []


async def test_remove_unknown_node(make_request: Callable[..., AddNodeRequest], central: Central) -> None:
    from installer import RemoveNodeRequest, remove_node

    with pytest.raises(InstallerError) as err:
        await remove_node(RemoveNodeRequest(node=central.name, server=make_request().server))
    assert (err.value.step, err.value.code) == ("revoke", "unknown_node")


async def test_bad_token_or_role_fails_before_ssh(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd
) -> None:
    from dataclasses import replace

    request = make_request()
    request.server = replace(request.server, token="not-a-token")
    logins_before = target_sshd.log_path.read_text().count("Accepted password")
    with pytest.raises(InstallerError) as err:
        await add_node(request)
    # the server's own code for an unknown token (the fake server said "unauthorized")
    assert (err.value.step, err.value.code) == ("connect", "bad_token") and "token" in err.value.hint

    viewer = central.account("viewer")
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(server=central.spec(viewer)))
    assert err.value.code == "http_403" and "'viewer'" in err.value.message
    assert target_sshd.log_path.read_text().count("Accepted password") == logins_before
    assert central.requests() == central.requests(f"{central.operator}-viewer") == central.audit() == []


async def test_unreachable_target(make_request: Callable[..., AddNodeRequest], central: Central) -> None:
    from .sshd import free_port

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(port=free_port()))
    assert (err.value.step, err.value.code) == ("connect", "unreachable")
    assert "refused" in err.value.message and err.value.hint
    assert central.requests() == central.audit() == []


async def test_via_node(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, prefix: Path, tmp_path: Path
) -> None:
    from installer import ViaNode

    relay = f"{central.name}-relay"
    with online_daemon(central.server, tmp_path / "relay", name=relay):  # a node of the fleet, its real daemon
        result = await add_node(make_request(source=ViaNode(relay)))
    assert central.node(result.node_id)["state"] == "online" and daemon_pid(prefix) is not None
    tunnels = [(e["target"], e["detail"]) for e in central.audit() if e["action"] == "tunnel"]
    # One stream for the host key check, one for the session itself.
    assert tunnels == [(relay, {"host": "127.0.0.1", "port": target_sshd.port})] * 2


async def test_via_node_failures_are_clear(
    make_request: Callable[..., AddNodeRequest], central: Central, closed_port: int, tmp_path: Path
) -> None:
    from installer import ViaNode

    relay = f"{central.name}-relay"
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(source=ViaNode(relay)))
    assert (err.value.code, "dvic nodes" in err.value.hint) == ("via_unknown", True)

    relay_id, daemon = enrolled_daemon(central.server, tmp_path / "relay", name=relay)  # its daemon not running
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(source=ViaNode(relay)))
    assert err.value.code == "via_offline" and "online node" in err.value.hint

    try:
        wait_connected(central.server, relay_id, daemon.start())
        with pytest.raises(InstallerError) as err:  # a port the server allows, where nothing listens
            await add_node(make_request(source=ViaNode(relay), port=closed_port))
    finally:
        daemon.stop()
    assert err.value.code == "unreachable" and "cannot reach 127.0.0.1:" in err.value.message
    assert central.enrollments() == []  # the failed adds enrolled nothing


async def test_no_python_on_target(
    make_request: Callable[..., AddNodeRequest], central: Central, tmp_path: Path, prefix: Path
) -> None:
    # A PATH holding every tool of this machine but Python.
    bare = tmp_path / "bin-without-python"
    bare.mkdir()
    for directory in (Path("/usr/bin"), Path("/bin")):
        for tool in directory.iterdir():
            if not tool.name.startswith("python") and not (bare / tool.name).exists():
                (bare / tool.name).symlink_to(tool)
    # Left by runs cut off between upload and run: the user's old ones go, nothing else.
    stale, fresh, others = _install_dirs("dvic-it", age=7200), _install_dirs("dvic-it", 0), _install_dirs("root", 7200)
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(target_path=str(bare)))
    assert (stale.exists(), fresh.exists(), others.exists()) == (False, True, True)
    shutil.rmtree(fresh)
    shutil.rmtree(others)
    assert (err.value.step, err.value.code) == ("check", "no_python")
    assert "python3" in err.value.message and "--python" in err.value.hint
    assert central.enrollments() == []
    assert tree(prefix) == []


async def test_unknown_host_key_needs_confirmation(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(expect_host_key="", confirm_host_key=None))
    assert err.value.code == "host_key_unknown"
    assert target_sshd.fingerprint in err.value.message and "--expect-host-key" in err.value.hint

    asked: list[str] = []

    async def refuse(prompt: HostKeyPrompt) -> bool:
        asked.append(prompt.fingerprint)
        return False

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(expect_host_key="", confirm_host_key=refuse))
    assert err.value.code == "host_key_rejected"
    assert asked == [target_sshd.fingerprint]

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(expect_host_key="SHA256:" + "A" * 43))
    assert err.value.code == "host_key_mismatch"
    assert not known_hosts.exists() and central.requests() == central.audit() == []


async def test_a_pin_is_checked_even_when_known_hosts_has_the_key(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, jump_sshd: Sshd,
    jump_key: Path, tmp_path: Path, prefix: Path,
) -> None:
    import asyncssh

    from installer.hostkeys import KnownHosts

    store = KnownHosts(tmp_path / "known_hosts")
    for sshd in (target_sshd, jump_sshd):  # both confirmed on an earlier run
        store.add("127.0.0.1", sshd.port, asyncssh.read_public_key(str(sshd.host_key) + ".pub"))
    saved = store.path.read_text()
    logins = target_sshd.log_path.read_text().count("Accepted password")
    jump_logins = jump_sshd.log_path.read_text().count("Accepted publickey")
    wrong = "SHA256:" + "A" * 43

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(expect_host_key=wrong))
    assert err.value.code == "host_key_mismatch" and wrong in err.value.message
    assert target_sshd.fingerprint in err.value.message

    jump = Jump(host="127.0.0.1", port=jump_sshd.port, user="dvic-it", client_keys=[str(jump_key)],
                expect_host_key=wrong)
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(source=jump))
    assert err.value.code == "host_key_mismatch" and f"jump host [127.0.0.1]:{jump_sshd.port}" in err.value.message

    assert target_sshd.log_path.read_text().count("Accepted password") == logins
    assert jump_sshd.log_path.read_text().count("Accepted publickey") == jump_logins
    assert central.requests() == central.audit() == [] and tree(prefix) == [] and store.path.read_text() == saved


@pytest.mark.parametrize("pin", ["MD5:aa:bb", "SHA256:AAAA", "SHA256:" + "A" * 44])
async def test_a_malformed_pin_fails_before_connecting(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, pin: str
) -> None:
    connections = target_sshd.log_path.read_text().count("Connection from")
    for request in (make_request(expect_host_key=pin),
                    make_request(source=Jump(host="127.0.0.1", port=target_sshd.port, expect_host_key=pin))):
        with pytest.raises(InstallerError) as err:
            await add_node(request)
        assert (err.value.step, err.value.code) == ("connect", "bad_pin")
        assert "is not a SHA256 fingerprint" in err.value.message and "--expect-" in err.value.hint
    assert target_sshd.log_path.read_text().count("Connection from") == connections
    assert central.requests() == central.audit() == []


async def test_changed_host_key_aborts_loudly(
    make_request: Callable[..., AddNodeRequest], central: Central, ssh_user: str, tmp_path: Path
) -> None:
    from installer.hostkeys import KnownHosts, trusted_host_keys

    sshd = Sshd(tmp_path / "sshd-changing", ssh_user).start()
    try:
        store = KnownHosts(tmp_path / "known_hosts")
        await trusted_host_keys(store, role="target", host="127.0.0.1", port=sshd.port, expected=sshd.fingerprint,
                                confirm=None, tunnel=None, connect_timeout=10)
        saved = store.path.read_text()
        old = sshd.fingerprint
        sshd.stop()
        sshd.new_host_key()  # the "reinstalled" (or impersonated) machine, same address and port
        sshd.start()
        with pytest.raises(InstallerError) as err:
            await add_node(make_request(port=sshd.port, expect_host_key=sshd.fingerprint))
    finally:
        sshd.stop()
    assert err.value.code == "host_key_changed"
    assert "HOST KEY CHANGED" in err.value.message and old in err.value.message
    assert sshd.fingerprint in err.value.message
    assert store.path.read_text() == saved
    assert central.requests() == central.audit() == []


async def test_host_key_of_another_type_is_a_change(
    make_request: Callable[..., AddNodeRequest], central: Central, ssh_user: str, tmp_path: Path
) -> None:
    import subprocess

    from installer.hostkeys import KnownHosts

    sshd = Sshd(tmp_path / "sshd-rsa", ssh_user)
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(sshd.host_key)], check=True)
    store = KnownHosts(tmp_path / "known_hosts")
    sshd.start()
    try:
        import asyncssh

        store.add("127.0.0.1", sshd.port, asyncssh.generate_private_key("ssh-ed25519"))  # confirmed earlier
        with pytest.raises(InstallerError) as err:
            await add_node(make_request(port=sshd.port, expect_host_key=""))  # only known_hosts speaks
    finally:
        sshd.stop()
    assert err.value.code == "host_key_changed" and "it now presents SHA256:" in err.value.message
    assert central.requests() == central.audit() == []


async def test_rerun_repairs_in_place_with_the_same_identity(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, prefix: Path,
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    async def accept(prompt: HostKeyPrompt) -> bool:
        asked.append(prompt.fingerprint)
        return True

    first = await add_node(make_request(expect_host_key="", confirm_host_key=accept))
    assert asked == [target_sshd.fingerprint]
    known = (tmp_path / "known_hosts")
    assert stat.S_IMODE(known.stat().st_mode) == 0o600 and f"[127.0.0.1]:{target_sshd.port}" in known.read_text()
    old_pid = daemon_pid(prefix)
    (prefix / "opt/dvic-node/dvic_node.py").write_text("broken on purpose\n")  # something to repair

    async def must_not_ask(prompt: HostKeyPrompt) -> bool:
        raise AssertionError("a confirmed host key was asked again")

    second = await add_node(make_request(expect_host_key="", confirm_host_key=must_not_ask))
    assert second.reused_identity and second.node_id == first.node_id
    assert central.enrollments() == [201]
    assert "kept the installed identity" in second.steps[2].message
    new_pid = daemon_pid(prefix)
    assert new_pid is not None and new_pid != old_pid
    assert (prefix / "opt/dvic-node/dvic_node.py").read_text() == DEFAULT_DAEMON_SOURCE.read_text()

    with pytest.raises(InstallerError) as err:
        await add_node(make_request(name="another-name"))
    assert err.value.code == "name_mismatch" and first.node_id in err.value.hint
    assert daemon_pid(prefix) == new_pid and central.enrollments() == [201]


async def test_daemon_that_dies_leaves_nothing_and_revokes(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path, tmp_path: Path
) -> None:
    dying = tmp_path / "dying.py"
    dying.write_text("import sys\nprint('cannot start: no luck')\nsys.exit(1)\n")
    steps: list[Step] = []
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=dying), steps.append)
    assert (err.value.step, err.value.code) == ("install", "start_failed")
    assert "no luck" in err.value.message
    assert _ended(steps)[-2:] == [("install", "failed"), ("rollback", "ok")]
    assert central.enrollments() == [201] and central.node()["revoked"] is True
    assert not (prefix / "opt").exists() and not (prefix / "etc").exists() and not (prefix / "var").exists()


async def test_failed_upgrade_restores_the_running_install(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path, tmp_path: Path
) -> None:
    first = await add_node(make_request())
    daemon = prefix / "opt/dvic-node/dvic_node.py"
    before = daemon.read_text()
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=bad))
    assert err.value.code == "bad_daemon"
    assert daemon.read_text() == before and daemon_pid(prefix) is not None
    assert central.node(first.node_id)["revoked"] is False  # a kept identity is never revoked

    dying = tmp_path / "dying.py"
    dying.write_text("raise SystemExit(2)\n")
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=dying))
    assert err.value.code == "start_failed"
    assert daemon.read_text() == before and daemon_pid(prefix) is not None  # rolled back and restarted
    assert central.node(first.node_id)["revoked"] is False


async def test_never_online_is_rolled_back_and_shows_the_daemons_last_lines(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path, tmp_path: Path
) -> None:
    silent = tmp_path / "silent.py"
    silent.write_text("import sys, time\nprint('connection: cannot reach the server (a marker)', file=sys.stderr, "
                      "flush=True)\nwhile True:\n    time.sleep(1)\n")
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=silent, online_timeout=1.0))
    assert (err.value.step, err.value.code) == ("online", "timeout")
    assert central.enrollments() == [201] and central.node()["revoked"] is True
    assert daemon_pid(prefix) is None and not (prefix / "opt/dvic-node").exists()
    # The rollback deleted the daemon's log: the error carries its end instead of pointing to it.
    assert not (prefix / "var/lib/dvic-node/daemon.out").exists()
    assert "read before the rollback removed it: connection: cannot reach the server (a marker)" in err.value.message
    assert "daemon.out" not in err.value.hint and "journalctl" not in err.value.hint


async def test_remove_node_uninstalls(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, prefix: Path,
    tmp_path: Path,
) -> None:
    from installer import Password, RemoveNodeRequest, remove_node

    from .conftest import PASSWORD

    result = await add_node(make_request())
    admin = central.spec(central.account("admin"))  # the node has connected: only an admin may revoke it
    # Revoked first, alone; then the uninstall on a second run (as after a failed uninstall).
    assert [s.message for s in await remove_node(RemoveNodeRequest(node=central.name, server=admin))
            ] == [f"revoked {central.name} ({result.node_id})"]
    request = RemoveNodeRequest(
        node=central.name, server=admin, uninstall=True, host="127.0.0.1", user="dvic-it",
        password=Password(PASSWORD.encode()), port=target_sshd.port, known_hosts=tmp_path / "known_hosts",
        prefix=str(prefix), init="none",
    )
    steps = await remove_node(request)
    assert "already revoked" in steps[0].message
    assert [(s.name, s.status.value) for s in steps] == [("revoke", "ok"), ("connect", "ok"), ("uninstall", "ok")]
    assert central.node(result.node_id)["revoked"] is True
    assert daemon_pid(prefix) is None
    # Only the shared parent directories (like /etc/systemd/system) stay.
    assert [p for p in tree(prefix) if not p.endswith("/")] == []
    assert not any("dvic-node" in p for p in tree(prefix))


async def test_online_means_the_installed_daemon_version(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path, tmp_path: Path
) -> None:
    real = DEFAULT_DAEMON_SOURCE.read_text()
    running = daemon_version(real)
    # The installer takes a file's first VERSION line: this one claims 9.9.9 but runs (and says) `running`,
    # as if an older daemon with this identity were still the one connected.
    claims_newer = tmp_path / "claims-newer.py"
    claims_newer.write_text(real.replace(f'VERSION = "{running}"', f'VERSION = "9.9.9"\nVERSION = "{running}"', 1))

    def seen_online_first(step: Step) -> None:
        # The installer's first look at the node comes after the server saw its daemon.
        if step.name == "online" and step.status == StepStatus.RUNNING:
            wait_for(lambda: central.node()["state"] == "online", 20, "the daemon online")

    admin = central.spec(central.account("admin"))  # the rollback revokes a node that connected: an admin's call
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=claims_newer, online_timeout=1.0, server=admin), seen_online_first)
    assert err.value.code == "timeout" and f"running daemon {running}, not 9.9.9" in err.value.message

    is_newer = tmp_path / "is-newer.py"
    is_newer.write_text(real.replace(f'VERSION = "{running}"', 'VERSION = "9.9.9"', 1))
    result = await add_node(make_request(daemon_source=is_newer, server=admin))
    node = central.node(result.node_id)
    assert (node["state"], node["daemon_version"]) == ("online", "9.9.9")


async def test_cancelling_revokes_the_fresh_enrollment(
    make_request: Callable[..., AddNodeRequest], central: Central
) -> None:
    task: asyncio.Task[object] | None = None

    def cancel_at_install(step: Step) -> None:
        if step.name == "install" and step.status == StepStatus.RUNNING and task is not None:
            task.cancel()  # what Ctrl-C does to `dvic add-node`

    task = asyncio.create_task(add_node(make_request(), cancel_at_install))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert central.enrollments() == [201] and central.node()["revoked"] is True


async def test_events_stream_for_a_server_endpoint(
    make_request: Callable[..., AddNodeRequest], central: Central, target_sshd: Sshd, tmp_path: Path,
    prefix: Path, unit_template: Path,
) -> None:
    from dataclasses import replace

    from installer.events import add_node_events, parse_add_node_body

    from .conftest import PASSWORD

    server = make_request().server
    body = {"host": "127.0.0.1", "port": target_sshd.port, "user": "dvic-it", "password": PASSWORD,
            "name": central.name}
    request = parse_add_node_body(body, server, known_hosts=tmp_path / "known_hosts")
    request = replace(request, prefix=str(prefix), init="none", unit_template=unit_template)
    shown: list[str] = []

    async def operator_says_yes(prompt: HostKeyPrompt) -> bool:
        shown.append(prompt.fingerprint)
        return True

    events = [e async for e in add_node_events(request, confirm=operator_says_yes)]
    assert events[0]["type"] == "step" and events[0]["step"]["name"] == "connect"
    assert events[1] == {"type": "host_key", "role": "target", "host": "127.0.0.1", "port": target_sshd.port,
                         "key_type": "ssh-ed25519", "fingerprint": target_sshd.fingerprint}
    assert shown == [target_sshd.fingerprint]
    steps = [(e["step"]["name"], e["step"]["status"]) for e in events if e["type"] == "step"]
    assert len(events) == len(steps) + 2
    assert steps == [pair for name in STEP_NAMES for pair in ((name, "running"), (name, "ok"))]
    assert events[-1]["type"] == "done" and events[-1]["name"] == central.name

    failing = parse_add_node_body({**body, "port": 1}, server, known_hosts=tmp_path / "known_hosts")
    events = [e async for e in add_node_events(failing)]
    assert events[-1]["type"] == "error" and events[-1]["step"] == "connect"
    assert events[-1]["code"] in ("unreachable", "host_key_unknown")


def test_parse_add_node_body_errors() -> None:
    from installer import ServerSpec
    from installer.events import parse_add_node_body

    server = ServerSpec("https://127.0.0.1:1", "t")
    good = {"host": "10.0.0.2", "user": "pi", "password": "pw"}
    assert parse_add_node_body(good, server).port == 22
    assert parse_add_node_body({**good, "jump": "ops@gw:2200"}, server).source == Jump("gw", 2200, "ops")
    for bad, field in (
        ([], "JSON object"), ({**good, "password": ""}, "password"), ({**good, "port": "22"}, "port"),
        ({**good, "kind": "esp32"}, "kind"), ({**good, "via": "a", "jump": "b"}, "at most one"),
        ({**good, "shell": "x"}, "unknown field"), ({**good, "host": 5}, "host"), ({"user": "pi"}, "host"),
        ({**good, "jump": "gw:x"}, "jump"), ({**good, "online_timeout": 0}, "online_timeout"),
    ):
        with pytest.raises(ValueError, match=field):
            parse_add_node_body(bad, server)
