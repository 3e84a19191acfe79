"""Fixtures for the installer tests: a real sshd (target and jump), a test user, the real central server."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from installer import AddNodeRequest, Password, ServerSpec
from installer.paths import DEFAULT_UNIT_TEMPLATE
from tests.support.procs import cmdline, stop_pid
from tests.support.server import CentralServer

from .sshd import Sshd, ensure_user, free_port

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


@pytest.fixture(scope="session")
def closed_port() -> int:
    """A loopback port where nothing listens (free when the session began)."""
    return free_port()


@pytest.fixture(scope="session")
def session_central(target_sshd: Sshd, closed_port: int,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """One real dvic-central for the add-node tests, each with its own account and node names.
    Tunnels through a node may reach the target's sshd, and the closed port."""
    with CentralServer(tmp_path_factory.mktemp("central") / "central", extra_args=(
            "--tunnel-port", str(target_sshd.port), "--tunnel-port", str(closed_port))) as server:
        yield server


@dataclass
class Central:
    """The session's server as one test sees it: the test's own operator account, whose token the
    installer uses, and the name of the test's node. What the installer asked of the server and
    changed on it is what this account did: the access log and the audit trail say which."""

    server: CentralServer
    operator: str
    token: str

    @property
    def name(self) -> str:
        return self.operator  # the node the test adds is named after the test, like its account

    @property
    def url(self) -> str:
        return self.server.url

    def spec(self, token: str = "") -> ServerSpec:
        return ServerSpec(self.server.url, token or self.token, str(self.server.ca_path))

    def account(self, role: str) -> str:
        """A token of a further account of this test with `role`."""
        name = f"{self.operator}-{role[:6]}"
        status, body = self.server.api("POST", "/api/v1/operators", {"name": name, "role": role})
        assert status == 201, body
        return str(body["token"])

    def requests(self, operator: str = "") -> list[tuple[str, str]]:
        """(method, target) of this account's calls to the node API (/api/v1/nodes...), from the access log."""
        calls = []
        for line in self.server.log().splitlines():
            if " dvic-central.access: " in line:
                _, who, method, target = line.split(" dvic-central.access: ", 1)[1].split()[:4]
                if who == (operator or self.operator) and target.startswith("/api/v1/nodes"):
                    calls.append((method, target))
        return calls

    def audit(self) -> list[dict[str, Any]]:
        """This account's audit rows, oldest first: every write it asked for, refused ones too."""
        entries: list[dict[str, Any]] = []
        cursor = ""
        while True:
            status, body = self.server.api("GET", "/api/v1/audit?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200, body
            entries += [e for e in body["entries"] if e["operator"] == self.operator]
            cursor = body["next_cursor"] or ""
            if not cursor:
                return entries[::-1]

    def enrollments(self) -> list[int]:
        """The HTTP status of each enrollment this account asked for."""
        return [e["status"] for e in self.audit() if e["action"] == "POST /api/v1/nodes"]

    def node(self, ref: str = "") -> dict[str, Any]:
        return self.server.node(ref or self.name)

    def nodes_named(self, name: str = "") -> list[dict[str, Any]]:
        """Every node that has or had this name (a revoked one keeps it until the name is enrolled again)."""
        status, body = self.server.api("GET", "/api/v1/nodes")
        assert status == 200, body
        return [n for n in body["nodes"] if n["name"] == (name or self.name)]


@pytest.fixture
def central(session_central: CentralServer, request: pytest.FixtureRequest) -> Central:
    """The test's own operator account on the session's server (named after the test)."""
    name = _test_name(request.node.name)
    status, body = session_central.api("POST", "/api/v1/operators", {"name": name, "role": "operator"})
    assert status == 201, body
    return Central(session_central, name, body["token"])


def _test_name(test: str) -> str:
    """A node and account name for a test: unique in the session, fit for both (and a suffix)."""
    stem = "".join(c if c.isalnum() else "-" for c in test.removeprefix("test_").lower())[:18].strip("-")
    return f"{stem}-{secrets.token_hex(3)}"


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
    """The daemon an install into `root` started (its pid file names it, its command line confirms)."""
    pidfile = root / "var/lib/dvic-node/dvic-node.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if str(root / "opt/dvic-node/dvic_node.py").encode() in cmdline(pid) else None


def stop_daemon(root: Path) -> None:
    pid = daemon_pid(root)
    if pid is not None:
        # daemon_pid() is None once it exited, even while it waits as a zombie for init to reap it.
        stop_pid(pid, lambda: daemon_pid(root) == pid)


@pytest.fixture
def make_request(
    target_sshd: Sshd, central: Central, prefix: Path, unit_template: Path, tmp_path: Path,
) -> Callable[..., AddNodeRequest]:
    """An AddNodeRequest for the test target (direct, no systemd, in the prefix, the real daemon)."""

    def make(**overrides: object) -> AddNodeRequest:
        values: dict[str, object] = dict(
            host="127.0.0.1", port=target_sshd.port, user=USER, password=Password(PASSWORD.encode()),
            server=central.spec(), name=central.name, expect_host_key=target_sshd.fingerprint,
            known_hosts=tmp_path / "known_hosts", prefix=str(prefix), init="none", unit_template=unit_template,
            connect_timeout=10.0, online_timeout=20.0,
        )
        values.update(overrides)
        return AddNodeRequest(**values)  # type: ignore[arg-type]

    return make
