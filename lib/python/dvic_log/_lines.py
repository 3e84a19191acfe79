"""Splitting a byte stream (a child's stdout or stderr) into text lines of bounded length."""

from typing import List

#: A "line" longer than this without a newline is shipped in pieces of this many bytes, so a
#: program printing megabytes without "\n" cannot make the wrapper hold them all in memory.
MAX_LINE_BYTES = 64 * 1024


def _safe_cut(data: bytes, limit: int) -> int:
    """Index <= limit that does not split a UTF-8 sequence (when data is UTF-8 at all)."""
    cut = limit
    # Back off over at most 3 continuation bytes (0b10xxxxxx) to a character start.
    while cut > limit - 3 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


def decode(raw: bytes) -> str:
    """Bytes of one line to text: UTF-8, invalid bytes as U+FFFD, a trailing CR dropped."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


class LineSplitter:
    """Feed chunks in, get complete lines out; finish() returns an unterminated last line."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> List[str]:
        self._buf += data
        lines: List[str] = []
        start = 0
        buf = self._buf
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            lines.extend(self._pieces(bytes(buf[start:end])))
            start = end + 1
        del buf[:start]
        while len(buf) > self._max:
            cut = _safe_cut(buf, self._max)
            lines.append(decode(bytes(buf[:cut])))
            del buf[:cut]
        return lines

    def _pieces(self, raw: bytes) -> List[str]:
        if len(raw) <= self._max:
            return [decode(raw)]
        out = []
        while len(raw) > self._max:
            cut = _safe_cut(raw, self._max)
            out.append(decode(raw[:cut]))
            raw = raw[cut:]
        out.append(decode(raw))
        return out

    def finish(self) -> List[str]:
        if not self._buf:
            return []
        rest = bytes(self._buf)
        self._buf.clear()
        return self._pieces(rest)
