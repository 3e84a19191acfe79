"""A private network namespace and an inetd-style sshd that bridges into it, for isolation tests.

Only loopback is used: the target listens on the namespace's own 127.0.0.1, which the test
process cannot reach. The jump host accepts on this namespace's 127.0.0.1 and runs one
``sshd -i`` per connection *inside* the private namespace, so only the jump can reach the target.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

from .sshd import SSHD, Sshd


class NetNamespace:
    """A network namespace kept alive by a sleeping holder process; loopback is up."""

    def __init__(self, directory: Path) -> None:
        ready = directory / "netns.ready"
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", f"ip link set lo up && touch {ready} && exec sleep 3600"])
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("cannot create a network namespace here")
            time.sleep(0.02)
        self.path = f"/proc/{self.proc.pid}/ns/net"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class InetdJump:
    """Accepts on 127.0.0.1 here; each connection is served by ``sshd -i`` inside ``netns``."""

    def __init__(self, sshd: Sshd, netns: str) -> None:
        self.sshd = sshd  # gives the config, host key and authorized keys (its own daemon is not started)
        self.netns = netns
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.children: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:  # ends when close() shuts the listening socket
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, open(self.sshd.log_path, "ab") as log:
                self.children.append(subprocess.Popen(
                    ["nsenter", f"--net={self.netns}", SSHD, "-i", "-e", "-f", str(self.sshd.config)],
                    stdin=conn, stdout=conn, stderr=log))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)
        for child in self.children:
            if child.poll() is None:
                child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
