"""The run wrapper: runs any program and logs its stdout and stderr lines to a dvic_log file.

The log file's header describes the child (its pid, start time, exe and argv), not this
wrapper, so the node daemon's liveness check follows the real demo.
"""

import errno
import os
import selectors
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any, Dict, List, Optional, Tuple

from ._config import check_name, resolve_dir, resolve_keep_seconds, resolve_max_bytes
from ._format import level_name
from ._identity import child_identity
from ._lines import LineSplitter
from ._writer import LogFile

#: Signals passed on to the child: the ones a supervisor or an operator uses to stop or poke it.
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# A terminal sends these to its whole foreground process group, the child included: forwarding
# them again would deliver every Ctrl-C twice.
_TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)

#: After the child exits, how long to keep reading output that a grandchild may still hold open.
DRAIN_GRACE_SECONDS = 2.0
# Upper bound on one select() wait: a safety net only; wakeups come from the signal pipe.
_MAX_WAIT_SECONDS = 5.0
_READ_SIZE = 65536

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
_RUN_LOGGER = "dvic_log.run"


class _Output:
    """One of the child's output streams: where it is read, at what level, where it is echoed."""

    def __init__(self, fd: int, level: str, echo_fd: Optional[int]) -> None:
        self.fd = fd
        self.level = level
        self.echo_fd = echo_fd
        self.splitter = LineSplitter()


class _SignalState:
    """Signals received by the wrapper, held until they can be forwarded to the child."""

    def __init__(self) -> None:
        self.pending: List[int] = []
        self.previous: Dict[int, Any] = {}

    def handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self.pending.append(signum)


def _terminal_signalled_group(signum: int) -> bool:
    """True when signum comes from our terminal, which already sent it to the child too.

    That is the case when we run in the foreground process group of a controlling terminal;
    a signal sent with kill(1) to the wrapper alone is then not forwarded (documented).
    """
    if signum not in _TERMINAL_SIGNALS:
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal (systemd, nohup, a test): always forward
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _status_text(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal %d" % -returncode
        return "killed by %s" % name
    return "exited with status %d" % returncode


def _echo(out: _Output, data: bytes) -> None:
    if out.echo_fd is None:
        return
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(out.echo_fd, view) :]
    except OSError:
        out.echo_fd = None  # our own stdout/stderr is gone (closed pipe): keep logging anyway


def _open_pty_stdout() -> Tuple[int, int]:
    """A pseudo-terminal for the child's stdout, without "\\n" to "\\r\\n" translation."""
    import termios  # Unix only, and only needed with --pty

    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    _copy_window_size(slave)
    return master, slave


def _copy_window_size(pty_fd: int) -> None:
    """Give the pty our terminal's size, so the child formats its output for the real width."""
    import fcntl
    import termios

    for fd in (1, 0, 2):
        if os.isatty(fd):
            try:
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(pty_fd, termios.TIOCSWINSZ, size)
            except OSError:
                pass
            return


class Runner:
    """Runs one child program and relays its output to a dvic_log file (and, by default, to us)."""

    def __init__(
        self,
        argv: List[str],
        name: str,
        *,
        directory: Optional[str] = None,
        max_bytes: Optional[int] = None,
        stdout_level: str = "INFO",
        stderr_level: str = "ERROR",
        echo: bool = True,
        use_pty: bool = False,
    ) -> None:
        if not argv:
            raise ValueError("dvic_log run: no command given")
        # Settings are checked before anything starts: a typo must not leave a demo half-started.
        self.name = check_name(name)
        self.directory = resolve_dir(directory)
        self.max_bytes = resolve_max_bytes(max_bytes)
        resolve_keep_seconds()  # LogFile reads it later; a bad value must stop us before the start
        self.argv = list(argv)
        self.stdout_level = level_name(stdout_level)
        self.stderr_level = level_name(stderr_level)
        self.echo = echo
        self.use_pty = use_pty
        self.log: Optional[LogFile] = None
        self._signals = _SignalState()
        self._failed_writes = 0
        self._spawn_failed = 0
        self._child: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    # ----- the whole run ------------------------------------------------------------------------

    def run(self) -> int:
        """Run the child to completion; return its returncode (negative: killed by that signal)."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        self._install_handlers()
        try:
            return self._run(wake_r)
        finally:
            self._restore_handlers()
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)

    def _run(self, wake_r: int) -> int:
        outputs = self._spawn()
        if self._child is None:
            return self._spawn_failed
        self._open_log()
        self._forward_pending()
        try:
            self._relay(outputs, wake_r)
            returncode = self._child.wait()
        finally:
            for out in outputs:
                os.close(out.fd)
        self._forward_pending()  # nothing to forward to any more; just clear the list
        self._write(
            "INFO" if returncode == 0 else "ERROR",
            "%s %s" % (self.argv[0], _status_text(returncode)),
            _RUN_LOGGER,
        )
        if self.log is not None:
            self.log.close()
        return returncode

    # ----- steps --------------------------------------------------------------------------------

    def _spawn(self) -> List[_Output]:
        env = dict(os.environ)
        # Python demos would otherwise block-buffer stdout in a pipe and their lines arrive late.
        env.setdefault("PYTHONUNBUFFERED", "1")
        pty_master = pty_slave = None
        if self.use_pty:
            pty_master, pty_slave = _open_pty_stdout()
        try:
            self._child = subprocess.Popen(
                self.argv,
                stdout=pty_slave if pty_slave is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            if pty_master is not None:
                os.close(pty_master)
            self._child = None
            self._spawn_failed = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
            self._report_spawn_failure(exc)
            return []
        finally:
            if pty_slave is not None:
                os.close(pty_slave)  # the child has its copy; ours would keep the pty from EOF
        child = self._child
        assert child.stderr is not None
        stdout_fd = pty_master if pty_master is not None else os.dup(child.stdout.fileno())  # type: ignore[union-attr]
        stderr_fd = os.dup(child.stderr.fileno())
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
        return [
            _Output(stdout_fd, self.stdout_level, 1 if self.echo else None),
            _Output(stderr_fd, self.stderr_level, 2 if self.echo else None),
        ]

    def _report_spawn_failure(self, exc: OSError) -> None:
        message = "dvic_log run: cannot start %s: %s" % (self.argv[0], exc.strerror or exc)
        print(message, file=sys.stderr)
        # The operator should see why the demo never ran: log it in a file that describes us.
        try:
            with LogFile(self.name, directory=self.directory, max_bytes=self.max_bytes) as log:
                log.write("CRITICAL", message, logger=_RUN_LOGGER)
        except (OSError, ValueError) as log_exc:
            print("dvic_log run: cannot write the log file: %s" % log_exc, file=sys.stderr)

    def _open_log(self) -> None:
        assert self._child is not None
        try:
            self.log = LogFile(
                self.name,
                directory=self.directory,
                max_bytes=self.max_bytes,
                identity=child_identity(self._child.pid, self.argv),
            )
        except (OSError, ValueError) as exc:
            # The demo is already running: keep it and its console output rather than kill it.
            print("dvic_log run: cannot create the log file, output is not logged: %s" % exc, file=sys.stderr)

    def _write(self, level: str, msg: str, logger: Optional[str] = None) -> None:
        if self.log is None:
            return
        try:
            self.log.write(level, msg, logger=logger)
        except (OSError, ValueError) as exc:
            # Say it once per outage, not once per line: a full disk must not flood stderr.
            if not self._failed_writes:
                print("dvic_log run: cannot write the log file: %s" % exc, file=sys.stderr)
            self._failed_writes += 1
            return
        if self._failed_writes:
            print(
                "dvic_log run: logging resumed; %d records could not be written" % self._failed_writes,
                file=sys.stderr,
            )
            self._failed_writes = 0

    def _relay(self, outputs: List[_Output], wake_r: int) -> None:
        """Relay output and forward signals until the child exits and its output ends.

        Output still held open by a grandchild after the child exits is read for at most
        DRAIN_GRACE_SECONDS, so a daemonised helper cannot keep the wrapper alive.
        """
        child = self._child
        assert child is not None
        sel = selectors.DefaultSelector()
        for out in outputs:
            sel.register(out.fd, selectors.EVENT_READ, out)
        sel.register(wake_r, selectors.EVENT_READ, None)
        open_streams = len(outputs)
        deadline: Optional[float] = None
        try:
            while True:
                timeout = _MAX_WAIT_SECONDS
                if child.poll() is not None:
                    if not open_streams:
                        return
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + DRAIN_GRACE_SECONDS
                    elif now >= deadline:
                        return
                    timeout = deadline - now
                # A SIGCHLD between poll() and select() still wakes select through the pipe.
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        _drain_wakeup(wake_r)
                    elif not self._read(key.data):
                        sel.unregister(key.fd)
                        open_streams -= 1
                self._forward_pending()
        finally:
            sel.close()
            for out in outputs:
                for line in out.splitter.finish():
                    self._write(out.level, line)

    def _read(self, out: _Output) -> bool:
        """Read one chunk from a stream; False at its end."""
        try:
            data = os.read(out.fd, _READ_SIZE)
        except OSError as exc:
            if exc.errno == errno.EIO:  # a pty master reports the end of the child's side so
                return False
            raise
        if not data:
            return False
        _echo(out, data)
        for line in out.splitter.feed(data):
            self._write(out.level, line)
        return True

    # ----- signals ------------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        for signum in FORWARDED_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:
                # Ignored for us (nohup ignores SIGHUP, "cmd &" ignores SIGINT): leave it so,
                # and the child inherits the same disposition through exec.
                continue
            self._signals.previous[signum] = signal.signal(signum, self._signals.handler)
        # A handler (even one doing nothing) makes SIGCHLD write to the wakeup pipe.
        self._signals.previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda s, f: None)

    def _restore_handlers(self) -> None:
        for signum, previous in self._signals.previous.items():
            if previous is not None:  # None: a handler set outside Python, which we cannot restore
                signal.signal(signum, previous)

    def _forward_pending(self) -> None:
        pending, self._signals.pending = self._signals.pending, []
        child = self._child
        if child is None or child.returncode is not None:
            return
        for signum in pending:
            if _terminal_signalled_group(signum):
                continue
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                return


def _drain_wakeup(fd: int) -> None:
    try:
        os.read(fd, 512)
    except BlockingIOError:
        pass
