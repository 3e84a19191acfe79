"""A password held in a zeroable buffer: used once, never printed, wiped after use."""

from __future__ import annotations

import getpass
import sys
from typing import Protocol

_MAX_LINE = 4096


class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Password:
    """Holds a password as a ``bytearray`` so it can be overwritten when no longer needed.

    Python cannot wipe ``str`` objects, and asyncssh takes the SSH password as ``str``; the
    transient copies made by :meth:`text` and :meth:`line` are handed straight to asyncssh or a
    channel and dropped. The canonical copy lives here and is zeroed by :meth:`wipe`.
    """

    __slots__ = ("_buf",)

    def __init__(self, data: bytes | bytearray) -> None:
        if b"\n" in data or b"\r" in data or b"\0" in data:
            raise ValueError("a password cannot contain newline or NUL characters")
        self._buf = bytearray(data)
        if isinstance(data, bytearray):
            data[:] = b"\0" * len(data)

    @classmethod
    def from_stream(cls, stream: _ReadInto) -> Password:
        """Read one line (the password) from a binary stream, e.g. ``sys.stdin.buffer.raw``.

        Byte by byte straight into a bytearray: no intermediate ``bytes`` copy is left behind
        (an unbuffered stream also leaves nothing in a read-ahead buffer).
        """
        buf = bytearray(_MAX_LINE)
        view = memoryview(buf)
        n = 0
        try:
            while n < _MAX_LINE and stream.readinto(view[n:n + 1]):
                if buf[n] == 0x0A:
                    break
                n += 1
            else:
                if n == _MAX_LINE:
                    raise ValueError(f"the password line is longer than {_MAX_LINE} bytes")
            while n and buf[n - 1] == 0x0D:
                n -= 1
            if not n:
                raise ValueError("no password on standard input (expected one line)")
            return cls(buf[:n])  # the slice is zeroed by __init__ once copied
        finally:
            view.release()
            buf[:] = bytes(len(buf))

    @classmethod
    def prompt(cls, prompt: str = "SSH password: ") -> Password:
        """Ask on the terminal without echo."""
        if not sys.stdin.isatty():
            raise ValueError("no terminal to ask for the password: use --password-stdin")
        text = getpass.getpass(prompt)
        if not text:
            raise ValueError("empty password")
        return cls(bytearray(text.encode()))

    def text(self) -> str:
        """A transient ``str`` copy for asyncssh's ``password=`` (drop it right after use)."""
        self._check()
        return self._buf.decode("utf-8", errors="strict")

    def line(self) -> bytes:
        """The password followed by a newline, for ``sudo -S`` on a channel's stdin."""
        self._check()
        return bytes(self._buf) + b"\n"

    @property
    def wiped(self) -> bool:
        return not self._buf

    def wipe(self) -> None:
        """Overwrite the buffer with zeros and forget it."""
        for i in range(len(self._buf)):
            self._buf[i] = 0
        self._buf = bytearray()

    def _check(self) -> None:
        if not self._buf:
            raise RuntimeError("password already wiped")

    def __repr__(self) -> str:
        return "Password(***)" if self._buf else "Password(<wiped>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:  # never pickle a secret by accident
        raise TypeError("Password cannot be pickled")
