"""A private network namespace, an inetd-style sshd that bridges into it and a bridge to the test's
server, for isolation tests.

Only loopback is used: the target listens on the namespace's own 127.0.0.1, which the test
process cannot reach. The jump host accepts on this namespace's 127.0.0.1 and runs one
``sshd -i`` per connection *inside* the private namespace, so only the jump can reach the target.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from pathlib import Path

from tests.support.wait import WaitTimeout, wait_for

from .sshd import SSHD, Sshd


class NetNamespace:
    """A network namespace kept alive by a sleeping holder process; loopback is up."""

    def __init__(self, directory: Path) -> None:
        ready = directory / "netns.ready"
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", f"ip link set lo up && touch {ready} && exec sleep 3600"])
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: ready.exists() or self.proc.poll() is not None, 10, "the namespace", interval=0.02)
        if not ready.exists():
            self.close()
            raise RuntimeError("cannot create a network namespace here")
        self.path = f"/proc/{self.proc.pid}/ns/net"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Acceptor:
    """A listening socket served by a thread: each connection goes to `handle` (a subclass's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while True:  # ends when close() shuts the listening socket
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.handle(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)


class InetdJump(Acceptor):
    """Accepts on 127.0.0.1 here; each connection is served by ``sshd -i`` inside ``netns``."""

    def __init__(self, sshd: Sshd, netns: str) -> None:
        self.sshd = sshd  # gives the config, host key and authorized keys (its own daemon is not started)
        self.netns = netns
        self.children: list[subprocess.Popen[bytes]] = []
        super().__init__(socket.create_server(("127.0.0.1", 0), backlog=8))

    def handle(self, conn: socket.socket) -> None:
        with conn, open(self.sshd.log_path, "ab") as log:
            self.children.append(subprocess.Popen(
                ["nsenter", f"--net={self.netns}", SSHD, "-i", "-e", "-f", str(self.sshd.config)],
                stdin=conn, stdout=conn, stderr=log))

    def close(self) -> None:
        super().close()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


CLONE_NEWNET = 0x40000000  # <sched.h>


def _listen_inside(netns: str, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:`port` of the namespace `netns`.

    setns(2) moves only the calling thread: a short-lived thread enters the namespace, opens the
    socket there (it stays bound there) and leaves.
    """
    made: dict[str, object] = {}

    def inside() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        own, target = os.open("/proc/thread-self/ns/net", os.O_RDONLY), os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns}")
            try:
                made["socket"] = socket.create_server(("127.0.0.1", port))
            finally:
                libc.setns(own, CLONE_NEWNET)
        except OSError as exc:
            made["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["socket"]  # type: ignore[return-value]


class PortBridge(Acceptor):
    """127.0.0.1:`port` inside `netns` leads to 127.0.0.1:`port` here (a server of this test).

    The daemon an install starts in the isolated namespace finds its server where its bundle says
    (https://127.0.0.1:PORT); nothing else of this namespace is reachable from there.
    """

    def __init__(self, netns: str, port: int) -> None:
        super().__init__(_listen_inside(netns, port))

    def handle(self, conn: socket.socket) -> None:
        try:
            outer = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            conn.close()
            return
        outer.settimeout(None)
        threading.Thread(target=_bridge, args=(conn, outer), daemon=True).start()


def _bridge(inner: socket.socket, outer: socket.socket) -> None:
    back = threading.Thread(target=_pump, args=(outer, inner), daemon=True)
    back.start()
    _pump(inner, outer)
    back.join()
    inner.close()
    outer.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy one direction until its end, then pass the end on (half close)."""
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
