"""Fixtures for the installer tests: a real sshd (target and jump), a test user, a fake central server."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from installer import AddNodeRequest, Password, ServerSpec
from installer.paths import DEFAULT_UNIT_TEMPLATE

from .fake_central import FakeCentral
from .sshd import Sshd, ensure_user

HERE = Path(__file__).resolve().parent
USER = "dvic-it"
NOSUDO_USER = "dvic-it-nosudo"  # same password, but not allowed to use sudo


def _sentinel_password() -> str:
    """The test user's password: a sentinel the tests prove appears nowhere afterwards.

    Several test sessions may run at once on one machine and share the user, so the password
    must be the same for all of them: it is derived from a random key made once per machine
    (root-only file), so the password itself is never written anywhere.
    """
    key_path = Path("/var/lib/dvic-it-tests/key")
    try:
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    except PermissionError:  # not root: the SSH tests skip anyway
        return "dvicSentinel-" + secrets.token_hex(12)
    # Another session may be writing the key right now: wait for the whole of it.
    deadline = time.monotonic() + 5
    while len(key := key_path.read_text().strip()) < 64 and time.monotonic() < deadline:
        time.sleep(0.01)
    return "dvicSentinel-" + hmac.new(key.encode(), b"dvic-it password", hashlib.sha256).hexdigest()[:24]


PASSWORD = _sentinel_password()

# A minimal unit, used only while node_script/dvic-node.service does not exist yet.
MINIMAL_UNIT = """[Unit]
Description=DVIC node daemon
After=network-online.target

[Service]
ExecStart=@PYTHON@ @DAEMON@ --config @BUNDLE@ --state-dir @STATE_DIR@
Restart=always

[Install]
WantedBy=multi-user.target
"""


def _usable() -> str:
    if os.geteuid() != 0:
        return "the SSH tests create a user and run sshd: they need root"
    for tool in ("sshd", "ssh-keygen", "sudo", "useradd", "chpasswd"):
        if not shutil.which(tool) and not Path("/usr/sbin/" + tool).exists():
            return f"{tool} is not installed (.ci/run installs openssh-server and sudo)"
    return ""


@pytest.fixture(scope="session")
def ssh_user() -> str:
    reason = _usable()
    if reason:
        pytest.skip(reason)
    ensure_user(USER, PASSWORD)
    ensure_user(NOSUDO_USER, PASSWORD, sudo=False)
    return USER


@pytest.fixture
def password() -> Password:
    return Password(PASSWORD.encode())


@pytest.fixture(scope="session")
def target_sshd(ssh_user: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    sshd = Sshd(tmp_path_factory.mktemp("sshd-target"), f"{ssh_user} {NOSUDO_USER}").start()
    yield sshd
    sshd.stop()


@pytest.fixture(scope="session")
def jump_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jump-key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def jump_sshd(ssh_user: str, jump_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    pub = Path(str(jump_key) + ".pub").read_text()
    sshd = Sshd(tmp_path_factory.mktemp("sshd-jump"), ssh_user, authorized_keys=pub).start()
    yield sshd
    sshd.stop()


@pytest.fixture
async def central(tmp_path: Path) -> AsyncIterator[FakeCentral]:
    server = await FakeCentral(tmp_path / "central").start()
    yield server
    await server.stop()


@pytest.fixture
def unit_template(tmp_path: Path) -> Path:
    if DEFAULT_UNIT_TEMPLATE.exists():
        return DEFAULT_UNIT_TEMPLATE
    path = tmp_path / "dvic-node.service"
    path.write_text(MINIMAL_UNIT)
    return path


@pytest.fixture
def prefix(tmp_path: Path) -> Iterator[Path]:
    """An install prefix on the target; any daemon left running in it is stopped afterwards."""
    root = tmp_path / "target-root"
    root.mkdir()
    yield root
    stop_daemon(root)


def tree(root: Path) -> list[str]:
    """Everything under ``root`` as sorted relative paths; directories end with "/"."""
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def daemon_pid(root: Path) -> int | None:
    pidfile = root / "var/lib/dvic-node/dvic-node.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(root / "opt/dvic-node/dvic_node.py").encode() in cmdline else None


def stop_daemon(root: Path) -> None:
    pid = daemon_pid(root)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    # daemon_pid() is None once it exited, even while it waits as a zombie for init to reap it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and daemon_pid(root) == pid:
        time.sleep(0.02)
    if daemon_pid(root) == pid:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_request(
    target_sshd: Sshd, central: FakeCentral, prefix: Path, unit_template: Path, tmp_path: Path,
) -> Callable[..., AddNodeRequest]:
    """An AddNodeRequest for the test target (direct, no systemd, in the prefix, stub daemon)."""

    def make(**overrides: object) -> AddNodeRequest:
        values: dict[str, object] = dict(
            host="127.0.0.1", port=target_sshd.port, user=USER, password=Password(PASSWORD.encode()),
            server=ServerSpec(central.url, central.token, str(central.ca_path)),
            name="pi-test", expect_host_key=target_sshd.fingerprint, known_hosts=tmp_path / "known_hosts",
            prefix=str(prefix), init="none", daemon_source=HERE / "stub_daemon.py",
            unit_template=unit_template, connect_timeout=10.0, online_timeout=20.0,
        )
        values.update(overrides)
        return AddNodeRequest(**values)  # type: ignore[arg-type]

    return make
