"""A real OpenSSH sshd on a free loopback port, with its own host key and config in a temp dir."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import stop_process
from tests.support.wait import WaitTimeout, wait_for

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


class Sshd:
    """``Sshd(dir, user).start()``; ``.port``, ``.fingerprint``; ``.stop()``. ``user`` may list several."""

    def __init__(self, directory: Path, user: str, authorized_keys: str = "", port: int = 0,
                 netns: str = "") -> None:
        self.netns = netns  # run inside this network namespace (a /proc/PID/ns/net path)
        self.dir = directory
        self.user = user
        self.authorized_keys = authorized_keys
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "sshd.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = directory / "ssh_host_ed25519_key"
        self._keys_dir: Path | None = None

    def new_host_key(self) -> None:
        for path in (self.host_key, Path(str(self.host_key) + ".pub")):
            path.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)

    @property
    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_key) + ".pub"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def start(self) -> Sshd:
        if not self.host_key.exists():
            self.new_host_key()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        # sshd reads authorized_keys as the user: pytest's temp dirs are root-only, so use a readable dir.
        self._keys_dir = Path(tempfile.mkdtemp(prefix="dvic-it-keys-"))
        self._keys_dir.chmod(0o755)
        auth_keys = self._keys_dir / "authorized_keys"
        auth_keys.write_text(self.authorized_keys)
        auth_keys.chmod(0o644)
        # A port freed by free_port() can be taken by someone else before sshd binds: retry a few times.
        for _attempt in range(5):
            port = self.port or free_port()
            config = self.config
            config.write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
                f"PidFile {self.dir / 'sshd.pid'}\nAllowUsers {self.user}\n"
                "UsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
                f"PubkeyAuthentication yes\nAuthorizedKeysFile {auth_keys}\nStrictModes no\n"
                "AllowTcpForwarding yes\nPermitRootLogin no\nLogLevel VERBOSE\n"
                "Subsystem sftp internal-sftp\nMaxStartups 50\n"
            )
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            self.proc = subprocess.Popen([*self.ns_prefix, SSHD, "-D", "-e", "-f", str(config)],
                                         stdout=log, stderr=log)
            log.close()
            with contextlib.suppress(WaitTimeout):
                wait_for(lambda port=port: self.proc.poll() is not None or self._ready(port), 10, "sshd to listen",
                         interval=0.02)
            if self.proc.poll() is None and self._ready(port):
                self.port = port
                return self
            self._stop_proc()
            if self.port:
                break
        self.stop()
        raise RuntimeError(f"sshd did not start:\n{self.log_path.read_text(errors='replace')}")

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def ns_prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.netns}"] if self.netns else []

    def _ready(self, port: int) -> bool:
        if not self.netns:
            return _listening(port)
        # Inside another namespace we cannot connect to it: trust its own word.
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"Server listening on 127.0.0.1 port {port}." in text

    def stop(self) -> None:
        self._stop_proc()
        if self._keys_dir is not None:
            shutil.rmtree(self._keys_dir, ignore_errors=True)
            self._keys_dir = None

    def _stop_proc(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None


@contextlib.contextmanager
def _users_lock() -> Iterator[None]:
    """Other test sessions and pytest-xdist workers add the same users at the same moment: useradd and
    chpasswd fail ("cannot lock /etc/passwd") while another holds the lock, so they take turns."""
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(LOCK_DIR / "users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


LOCK_DIR = Path("/var/lib/dvic-it-tests")  # root-only, as the key the password comes from (conftest.py)


def ensure_user(name: str, password: str, sudo: bool = True) -> None:
    """Create the test user if missing and set its password (idempotent; the password goes via stdin)."""
    with _users_lock():
        _ensure_user(name, password, sudo)


def _ensure_user(name: str, password: str, sudo: bool) -> None:
    # Other test sessions may do the same at the same moment: every step tolerates that.
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], capture_output=True)
        if made.returncode != 0 and subprocess.run(["id", name], capture_output=True).returncode != 0:
            raise RuntimeError(f"useradd {name} failed: {made.stderr.decode(errors='replace')}")
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
    sudoers = Path(f"/etc/sudoers.d/{name}")
    if not sudo:
        sudoers.unlink(missing_ok=True)
        return
    want = f"{name} ALL=(ALL:ALL) ALL\n"  # a password is required: the tests exercise sudo -S
    if not sudoers.exists() or sudoers.read_text() != want:
        # sudo skips files with a dot in their name, so a half-written temp file is never read.
        tmp = sudoers.with_name(f"{name}.{os.getpid()}.tmp")
        tmp.write_text(want)
        os.chmod(tmp, 0o440)
        os.replace(tmp, sudoers)
