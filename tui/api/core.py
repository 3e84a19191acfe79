"""The operator API client's core, without any I/O: requests as data, their encoding, the decoding of
answers and errors, and the limits both transports share (docs/architecture.md, "tui/api").

A `Request` says what to send and how to read the answer (`decode`); a transport (tui/api/aio.py on
aiohttp, tui/api/sync.py on the standard library) only moves bytes: `target` and `payload` give it
what to send, `decode` turns the status and body it got into the value or the `ApiError`. `error`
is the one reading of a refusal, for plain answers and refused websocket upgrades alike.

Standard library only, and cheap to import: `dvic run` loads it at start-up, so no `typing`,
`dataclasses` or `urllib` here (`seg`, `query`, `split_url` are written by hand).
"""

from __future__ import annotations

import json

from dvic_core.constants import OPERATOR_HEARTBEAT_S, STATUS_CODES
from tui.api.errors import ApiError, BadResponse

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar
    from typing import Generic as Generic

    T = TypeVar("T", covariant=True)  # what decoding a request's answer gives
else:
    T = None

    class Generic:
        """`typing.Generic` for the type checker; at run time a plain base, `Generic[...]` itself
        (the client's generic classes are read by the checker only, and `typing` is not imported)."""

        __slots__ = ()

        def __class_getitem__(cls, item):
            return cls


API = "/api/v1"
USER_AGENT = "dvic/0.1"
TIMEOUT_S = 15.0  # one request, from connecting to the last byte of the answer
ENROLL_TIMEOUT_S = 30.0  # for callers that enroll: the server makes a key and a certificate
CONNECT_S = 10.0  # of which connecting (TCP and TLS) at most
# Every client websocket pings at the interval the server uses on operator websockets; the stdlib
# transport does not ping, and gives up after two missed server pings and some slack.
HEARTBEAT_S = OPERATOR_HEARTBEAT_S
SILENCE_S = 2 * OPERATOR_HEARTBEAT_S + 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a websocket message: the live stream, a command's stream
RELAY_MAX_BYTES = 1024 * 1024  # a shell's or a tunnel's websocket message

# The server repeats a refusal's `code: message` in this header: aiohttp drops a refused upgrade's body.
ERROR_HEADER = "X-Dvic-Error"

Json = dict[str, "Any"]


class Request(Generic[T]):
    """One call of the API: `path` is below /api/v1; `decode(request, status, body)` reads a success.

    `body` is sent as JSON; `data` as is, with `content_type`."""

    __slots__ = ("method", "path", "decode", "params", "body", "data", "content_type")

    def __init__(self, method: str, path: str, decode: Callable[[Request[Any], int, bytes], T],
                 params: Mapping[str, str] | None = None, body: Json | None = None, data: bytes | None = None,
                 content_type: str = "") -> None:
        self.method = method
        self.path = path
        self.decode = decode
        self.params = params
        self.body = body
        self.data = data
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path})"


class Upgrade:
    """A websocket of the API: `path` below /api/v1, `what` names it in errors, `max_size` bounds a message."""

    __slots__ = ("path", "params", "what", "max_size")

    def __init__(self, path: str, params: Mapping[str, str] | None = None, what: str = "the websocket",
                 max_size: int = MAX_MESSAGE_BYTES) -> None:
        self.path = path
        self.params = params
        self.what = what
        self.max_size = max_size


# -- encoding ------------------------------------------------------------------------------------
def params(**kwargs: object) -> dict[str, str]:
    """Query parameters without the unset ones; numbers and booleans as the server expects them.

    A trailing underscore is dropped (`from_=...` is the `from` parameter)."""
    out: dict[str, str] = {}
    for key, value in kwargs.items():
        if value is None or value == "":
            continue
        out[key.rstrip("_")] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


# Bytes `urllib.parse.quote` never escapes (RFC 3986 unreserved).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def seg(value: str) -> str:
    """A URL path segment: node and operator names may hold characters that need quoting.

    `urllib.parse.quote(value, safe="")`: UTF-8, every byte but the unreserved ones as %XX."""
    data = value.encode()
    if all(b in _UNRESERVED for b in data):
        return value
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)


def query(values: Mapping[str, str]) -> str:
    """`urllib.parse.urlencode(values)`: names and values quoted as `quote_plus` does."""
    return "&".join(f"{_plus(k)}={_plus(v)}" for k, v in values.items())


def _plus(text: str) -> str:
    return "+".join(seg(part) for part in text.split(" "))


def target(path: str, values: Mapping[str, str] | None = None) -> str:
    """The request target of an API path: `/api/v1/nodes?group=lab`."""
    return f"{API}{path}?{query(values)}" if values else f"{API}{path}"


def payload(req: Request[object]) -> tuple[bytes | None, str]:
    """The body to send and its content type (None, "" when there is none)."""
    if req.body is not None:
        return json.dumps(req.body).encode(), "application/json"
    return req.data, req.content_type


def base_headers(token: str | None) -> dict[str, str]:
    """What every request carries."""
    out = {"User-Agent": USER_AGENT}
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


# -- decoding ------------------------------------------------------------------------------------
def error(status: int, body: bytes, header: str, fallback: str) -> ApiError:
    """The server's reason for a refusal: the `{"error": {"code", "message"}}` of its JSON body, else
    its `X-Dvic-Error: code: message` header (a refused websocket upgrade, whose body aiohttp drops),
    else a code for the status and `fallback` (an old server, a proxy)."""
    try:
        err = json.loads(body).get("error") if body else None
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        return ApiError(status, str(err.get("code", "error")), str(err.get("message", "")))
    code, _, message = header.partition(": ")
    if code and message:
        return ApiError(status, code, message)
    return ApiError(status, STATUS_CODES.get(status, "http_error"), fallback)


def said_why(exc: ApiError) -> bool:
    """Whether the server gave its own code, not just a status `error` had to name."""
    return exc.code not in (STATUS_CODES.get(exc.status), "http_error")


def decode(req: Request[T], status: int, body: bytes, header: str = "") -> T:
    """The value of an answer, or the ApiError it stands for (`header`: X-Dvic-Error, if any)."""
    if status >= 400:
        raise error(status, body, header, f"HTTP {status} from {req.path}: {body[:200]!r}")
    return req.decode(req, status, body)


def refused(up: Upgrade, status: int, body: bytes, header: str) -> ApiError:
    """A websocket upgrade the server answered with `status` instead of switching protocols."""
    return error(status, body, header, f"the server refused {up.what} (HTTP {status})")


def json_object(req: Request[object], status: int, body: bytes) -> Json:
    """Decoder: the answer is a JSON object (an empty body reads as {})."""
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise BadResponse(status, f"{req.method} {req.path}: the server's answer is not a JSON object")
    return doc


def items(doc: Json, key: str, status: int = 200) -> list[Json]:
    """The objects of the list under `key` (anything else in it is skipped)."""
    found = doc.get(key)
    if not isinstance(found, list):
        raise BadResponse(status, f"the server's answer has no `{key}` list")
    return [i for i in found if isinstance(i, dict)]


def object_list(key: str) -> Callable[[Request[object], int, bytes], list[Json]]:
    """Decoder: the list of objects under `key` of the answer."""
    def decode_list(req: Request[object], status: int, body: bytes) -> list[Json]:
        return items(json_object(req, status, body), key, status)
    return decode_list


def page(key: str) -> Callable[[Request[object], int, bytes], Json]:
    """Decoder: the answer, once it is checked to hold a list under `key` (pages: `lines`, `events`)."""
    def decode_page(req: Request[object], status: int, body: bytes) -> Json:
        doc = json_object(req, status, body)
        items(doc, key, status)
        return doc
    return decode_page


def raw(req: Request[object], status: int, body: bytes) -> bytes:
    """Decoder: the body as it came."""
    return body


def text(req: Request[object], status: int, body: bytes) -> str:
    """Decoder: the body as UTF-8 text."""
    return body.decode("utf-8", "replace")


def decode_frame(data: str | bytes) -> Json | None:
    """A websocket text message as a JSON object; None for anything else (a garbled frame must not end
    a stream: the caller skips it)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# -- URLs ----------------------------------------------------------------------------------------
# Characters of a URL's authority that `split_url` reads itself: a host name or IPv4 address and a port.
_PLAIN_AUTHORITY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:")


def split_url(url: str) -> tuple[str, str, str | None, int | None]:
    """(scheme, netloc, hostname, port) as `urllib.parse.urlsplit` gives them.

    The usual server URL (`https://host:port`, maybe a path) is read here: urllib.parse and the
    ipaddress module it imports cost a few milliseconds of every `dvic run`. Anything else (user
    info, IPv6 brackets, a query, odd characters) goes to urlsplit itself."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.partition("/")[0]
    host, colon, port_text = netloc.partition(":")
    if (sep and scheme in ("https", "http") and host and set(netloc) <= _PLAIN_AUTHORITY
            and (not colon or port_text.isdigit()) and not any(c in rest for c in "?#\t\r\n")):
        port = int(port_text) if port_text else None
        if port is None or port <= 65535:
            return scheme, netloc, host.lower(), port
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.hostname, parts.port


def ws_url(base: str, path: str) -> str:
    """The websocket URL of an API path on the server at `base`."""
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + API + path
