"""A scripted node that really executes remote-control requests (test scaffolding, not the daemon).

Built on tests/support/fake_node.FakeNode: after `hello` it serves the node websocket's remote
control messages (docs/protocol.md section 6) with real processes on this machine:
`exec` runs an asyncio subprocess (output streamed, timeout and cancel kill its process group),
`shell_open` runs /bin/sh on a real PTY (input, output, TIOCSWINSZ resizes, exit code), `tunnel_open`
opens a real TCP connection, `action` answers like a daemon (a reboot reconnects with a new boot time).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
import time
from typing import Any

from tests.support.fake_node import FakeNode

CHUNK = 48 * 1024
KILL_GRACE_S = 5.0
UNKNOWN_DEMO = "no-such-demo"  # start/stop/restart of this demo fails, as a daemon's would


class ExecutorNode:
    """`async with ExecutorNode(bundle) as node:` connects, says hello and serves until closed."""

    def __init__(self, bundle: dict[str, Any], *, boot_time: float | None = None) -> None:
        self.bundle = bundle
        self.boot_time = boot_time if boot_time is not None else time.time() - 3600
        self.fake = FakeNode(bundle)
        self.seen: set[str] = set()  # exec ids already run: a repeated id is a duplicate
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.cancelled: set[str] = set()
        self.shells: dict[str, _Shell] = {}
        self.tunnels: dict[str, asyncio.StreamWriter] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.received: list[dict[str, Any]] = []
        self._send_lock = asyncio.Lock()
        self._serve: asyncio.Task[None] | None = None
        self.reboots = 0

    async def __aenter__(self) -> ExecutorNode:
        await self.fake.__aenter__()
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self.fake.connect()
        await self.fake.hello(boot_time=self.boot_time)
        self._serve = asyncio.create_task(self._serve_loop())

    async def close(self) -> None:
        if self._serve is not None:
            self._serve.cancel()
            await asyncio.gather(self._serve, return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for shell in list(self.shells.values()):
            shell.kill()
            for task in shell.sends:
                task.cancel()
        for proc in self.procs.values():
            _killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():  # reaped here: a process left to the GC outlives the test's loop
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await asyncio.wait_for(proc.wait(), 10)
        for writer in self.tunnels.values():
            writer.close()
        await self.fake.close()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError, AssertionError):
                await self.fake.send(message)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve_loop(self) -> None:
        fake = self.fake  # a reboot replaces self.fake; this loop ends with its connection
        while True:
            try:
                msg = await fake.recv(timeout=3600)
            except (ConnectionError, TypeError, ValueError):
                return
            self.received.append(msg)
            handler = getattr(self, f"on_{msg.get('type')}", None)
            if handler is None:
                await self.send({"type": "unsupported", "id": msg.get("id", ""), "what": str(msg.get("type"))})
                continue
            await handler(msg)

    # -- commands -------------------------------------------------------------------------------------
    async def on_exec(self, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        if rid in self.seen:
            await self.send({"type": "exec_exit", "id": rid, "code": None, "signal": None, "reason": "duplicate",
                             "message": "already run", "truncated": False})
            return
        self.seen.add(rid)
        self.spawn(self._exec(msg))

    async def _exec(self, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        argv = msg["argv"] if msg.get("argv") else ["/bin/sh", "-c", msg["shell"]]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            await self.send({"type": "exec_exit", "id": rid, "code": None, "signal": None, "reason": "failed",
                             "message": f"cannot run {argv[0]}: {exc.strerror}", "truncated": False})
            return
        self.procs[rid] = proc
        await self.send({"type": "exec_started", "id": rid, "pid": proc.pid})
        budget = [int(msg.get("cap") or 1 << 20)]
        truncated = [False]

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while True:
                data = await stream.read(CHUNK)
                text = decoder.decode(data, final=not data)
                if text:
                    size = len(text.encode())
                    if size > budget[0]:
                        truncated[0] = True
                        text = text.encode()[:max(budget[0], 0)].decode("utf-8", "ignore")
                    budget[0] -= size
                    if text:
                        await self.send({"type": "exec_output", "id": rid, "stream": name, "data": text})
                if not data:
                    return

        assert proc.stdout is not None and proc.stderr is not None
        pumps = asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        reason = "exited"
        try:
            await asyncio.wait_for(proc.wait(), float(msg.get("timeout") or 60))
        except TimeoutError:
            reason = "timeout"
            await self._stop(proc)
        if rid in self.cancelled:
            reason = "cancelled"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pumps), 2.0)
        pumps.cancel()
        self.procs.pop(rid, None)
        code = proc.returncode
        await self.send({"type": "exec_exit", "id": rid, "code": code if code is not None and code >= 0 else None,
                         "signal": -code if code is not None and code < 0 else None, "reason": reason,
                         "message": "", "truncated": truncated[0]})

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period (as the protocol says)."""
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
        except TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def on_cancel(self, msg: dict[str, Any]) -> None:
        proc = self.procs.get(msg["id"])
        if proc is not None and proc.returncode is None:
            self.cancelled.add(msg["id"])
            self.spawn(self._stop(proc))

    # -- shells ---------------------------------------------------------------------------------------
    async def on_shell_open(self, msg: dict[str, Any]) -> None:
        shell = _Shell(self, msg["id"])
        try:
            await shell.start(int(msg["cols"]), int(msg["rows"]), str(msg.get("term") or "xterm-256color"))
        except OSError as exc:
            await self.send({"type": "shell_exit", "id": msg["id"], "code": None, "message": str(exc)})
            return
        self.shells[msg["id"]] = shell
        await self.send({"type": "shell_opened", "id": msg["id"], "pid": shell.pid})

    async def on_shell_input(self, msg: dict[str, Any]) -> None:
        shell = self.shells.get(msg["id"])
        if shell is not None:
            shell.write(base64.b64decode(msg["data"]))

    async def on_shell_resize(self, msg: dict[str, Any]) -> None:
        shell = self.shells.get(msg["id"])
        if shell is not None:
            shell.resize(int(msg["cols"]), int(msg["rows"]))

    async def on_shell_close(self, msg: dict[str, Any]) -> None:
        shell = self.shells.pop(msg["id"], None)
        if shell is not None:
            shell.kill()

    # -- tunnels --------------------------------------------------------------------------------------
    async def on_tunnel_open(self, msg: dict[str, Any]) -> None:
        self.spawn(self._tunnel(msg["id"], msg["host"], int(msg["port"])))

    async def _tunnel(self, tid: str, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            await self.send({"type": "tunnel_closed", "id": tid, "message": exc.strerror or str(exc)})
            return
        self.tunnels[tid] = writer
        await self.send({"type": "tunnel_opened", "id": tid})
        try:
            while data := await reader.read(CHUNK):
                await self.send({"type": "tunnel_data", "id": tid, "data": base64.b64encode(data).decode()})
        except OSError:
            pass
        if self.tunnels.pop(tid, None) is not None:
            writer.close()
            await self.send({"type": "tunnel_closed", "id": tid, "message": "closed by the peer"})

    async def on_tunnel_data(self, msg: dict[str, Any]) -> None:
        writer = self.tunnels.get(msg["id"])
        if writer is not None:
            writer.write(base64.b64decode(msg["data"]))

    async def on_tunnel_close(self, msg: dict[str, Any]) -> None:
        writer = self.tunnels.pop(msg["id"], None)
        if writer is not None:
            writer.close()

    # -- actions --------------------------------------------------------------------------------------
    async def on_action(self, msg: dict[str, Any]) -> None:
        self.spawn(self._action(msg))

    async def _action(self, msg: dict[str, Any]) -> None:
        aid, kind, demo = msg["id"], msg["action"], msg.get("demo")
        await self.send({"type": "action_state", "id": aid, "state": "in_progress", "message": f"{kind} started"})
        if kind == "reboot":
            # A reboot: the connection drops and the node says hello again with a new boot time.
            self.reboots += 1
            await self.send({"type": "action_state", "id": aid, "state": "done", "message": "rebooting"})
            await self.fake.close()
            self.fake = FakeNode(self.bundle)
            await self.fake.__aenter__()
            self.boot_time = time.time()
            await self.fake.connect()
            await self.fake.hello(boot_time=self.boot_time)
            self._serve = asyncio.ensure_future(self._serve_loop())
            return
        if demo == UNKNOWN_DEMO:
            await self.send({"type": "action_state", "id": aid, "state": "failed", "message": f"no demo {demo!r}"})
            return
        await self.send({"type": "action_state", "id": aid, "state": "done", "message": f"{kind} {demo or ''}".strip()})


class _Shell:
    """/bin/sh on a PTY in its own session; output relayed as shell_output, exit as shell_exit."""

    def __init__(self, node: ExecutorNode, sid: str) -> None:
        self.node = node
        self.sid = sid
        self.master = -1
        self.proc: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.output_done = asyncio.Event()
        self.sends: list[asyncio.Task[None]] = []

    async def start(self, cols: int, rows: int, term: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.resize(cols, rows)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": term, "PS1": "$ ", "HOME": "/tmp",
               "ENV": ""}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-i", stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                preexec_fn=_take_controlling_tty)
        finally:
            os.close(slave)
        self.pid = self.proc.pid
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.node.spawn(self._wait())

    def _readable(self) -> None:
        try:
            data = os.read(self.master, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: every process holding the PTY is gone
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            self.output_done.set()
            return
        self.sends = [t for t in self.sends if not t.done()]
        self.sends.append(asyncio.ensure_future(self.node.send(
            {"type": "shell_output", "id": self.sid, "data": base64.b64encode(data).decode()})))

    async def _wait(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.output_done.wait(), 2.0)
        # Output goes out before the exit, as on a real terminal.
        await asyncio.gather(*self.sends, return_exceptions=True)
        if self.node.shells.pop(self.sid, None) is not None:
            await self.node.send({"type": "shell_exit", "id": self.sid, "code": code if code >= 0 else None,
                                  "message": "" if code >= 0 else f"killed by signal {-code}"})
        self._close_master()

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, data)

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            _killpg(self.proc.pid, signal.SIGHUP)
            _killpg(self.proc.pid, signal.SIGKILL)

    def _close_master(self) -> None:
        if self.master >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1


def _take_controlling_tty() -> None:
    # In the child, after setsid(): make the PTY (its stdin) the controlling terminal, so job
    # control, SIGWINCH and hang-ups reach the shell as they would on a real login.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
