"""Where `dvic login` keeps the server URL, the pinned CA and the token, and how they are resolved.

Layout: `$XDG_CONFIG_HOME/dvic/` (default `~/.config/dvic/`), directory 0700, files 0600:
`config.json` (`{"server": URL, "ca_sha256": HEX}`), `ca.pem` (the pinned CA), `token`.
Precedence for each setting: command-line option, then environment (`DVIC_SERVER`, `DVIC_TOKEN`,
`DVIC_CA`), then what `dvic login` stored. The token can also come from a file (`--token-file`,
`DVIC_TOKEN_FILE`), which keeps it out of the process list that `--token` shows to every user.
Plain `http://` is accepted only for a loopback server (tui/api/tls.py, the one TLS policy).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping

from dvic_core.files import write_private
from tui.api import tls
from tui.api.errors import ConfigError as ConfigError  # where the commands have always found it

# pathlib (with urllib.parse and ipaddress) is imported only where a `Path` is handed out: every
# `dvic` command resolves its settings, `dvic run` in tens of milliseconds, and os.path does it.
TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from pathlib import Path


class Settings:
    """The resolved connection settings of one `dvic` run; immutable, compared by value.

    A plain class, not a dataclass or NamedTuple: every `dvic` command reads it, and `dataclasses`
    or `typing` take milliseconds to import (`dvic run` answers in tens of them).
    """

    __slots__ = ("server", "token", "ca", "ca_pem")
    server: str
    token: str | None
    ca: str | None  # path of the CA file to pin; None only for plain-HTTP development servers
    ca_pem: str | None  # the CA itself, when it is not (yet) in a file: `dvic login`

    def __init__(self, server: str, token: str | None, ca: str | None, ca_pem: str | None = None) -> None:
        for name, value in zip(self.__slots__, (server, token, ca, ca_pem), strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings are read-only (cannot set {name})")

    def _values(self) -> tuple[str | None, ...]:
        return (self.server, self.token, self.ca, self.ca_pem)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        token = "None" if self.token is None else "'***'"
        return f"Settings(server={self.server!r}, token={token}, ca={self.ca!r}, ca_pem={'…' if self.ca_pem else None})"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    from pathlib import Path

    return Path(_config_dir(os.environ if env is None else env))


def _config_dir(env: Mapping[str, str]) -> str:
    """The directory as a string, the way `config_dir` finds it (os.path joins where it used pathlib)."""
    base = env.get("XDG_CONFIG_HOME")
    if not base:
        home = env.get("HOME")
        if not home:
            home = os.path.expanduser("~")
            if home.startswith("~"):  # as Path.home()
                raise RuntimeError("Could not determine home directory.")
        base = os.path.join(home, ".config")
    return os.path.join(base, "dvic")


# Errors that mean "no such file" to pathlib's exists() and is_file(); any other (a directory we
# may not search) is raised, as they do.
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno not in _MISSING:
            raise
        return None
    except ValueError:  # a NUL in the name
        return None


def _is_file(path: str) -> bool:
    found = _stat(path)
    return found is not None and stat.S_ISREG(found.st_mode)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _load(directory: str) -> dict[str, str]:
    """Stored values in `directory` (see Store.load)."""
    out: dict[str, str] = {}
    cfg = os.path.join(directory, "config.json")
    if _stat(cfg) is not None:
        try:
            data = json.loads(_read_text(cfg))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{cfg} is unreadable ({exc}); run `dvic login URL` again") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{cfg} is not a JSON object; run `dvic login URL` again")
        out.update({k: v for k, v in data.items() if isinstance(v, str)})
    token = os.path.join(directory, "token")
    if _stat(token) is not None:
        out["token"] = _read_text(token).strip()
    ca = os.path.join(directory, "ca.pem")
    if _stat(ca) is not None:
        out["ca"] = ca
    return out


class Store:
    """The files `dvic login` writes and every later run reads."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or config_dir()

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.pem"

    def load(self) -> dict[str, str]:
        """Stored values: `server`, `ca_sha256`, `token`, `ca` (path) — only those present."""
        return _load(str(self.dir))

    def save(self, server: str, ca_pem: str | None, ca_sha256: str | None, token: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if ca_pem is not None:
            write_private(self.ca_path, ca_pem)
        elif self.ca_path.exists():
            self.ca_path.unlink()  # a plain-HTTP login must not keep pinning an older server's CA
        write_private(self.dir / "token", token + "\n")
        doc = {"server": server}
        if ca_sha256:
            doc["ca_sha256"] = ca_sha256
        write_private(self.dir / "config.json", json.dumps(doc, indent=2) + "\n")


def read_token_file(path: str, what: str = "--token-file") -> str:
    """The token in `path` (surrounding whitespace dropped), or a ConfigError saying what is wrong."""
    try:
        token = _read_text(path).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read the token file {path} ({what}): {reason}") from None
    if not token:
        raise ConfigError(f"the token file {path} ({what}) is empty")
    return token


def check_plain_http(server: str) -> None:
    """A ConfigError unless an `http://` URL names a loopback host (the token would go in clear)."""
    if server.startswith("http://"):
        tls.check(server, None)


def resolve(
    server: str | None = None,
    token: str | None = None,
    ca: str | None = None,
    env: Mapping[str, str] | None = None,
    store: Store | None = None,
    need_token: bool = True,
    token_file: str | None = None,
) -> Settings:
    """Merges options, environment and stored login into `Settings`, or says what is missing."""
    env = os.environ if env is None else env
    stored = store.load() if store is not None else _load(_config_dir(env))
    server = server or env.get("DVIC_SERVER") or stored.get("server")
    if token and token_file:
        raise ConfigError("give either --token or --token-file, not both")
    if token_file:
        token = read_token_file(token_file)
    elif not token and not env.get("DVIC_TOKEN") and env.get("DVIC_TOKEN_FILE"):
        token = read_token_file(env["DVIC_TOKEN_FILE"], "DVIC_TOKEN_FILE")
    token = token or env.get("DVIC_TOKEN") or stored.get("token")
    ca = ca or env.get("DVIC_CA") or stored.get("ca")
    if not server:
        raise ConfigError("no server: run `dvic login URL`, or pass --server URL (or set DVIC_SERVER)")
    server = server.rstrip("/")
    tls.check(server, ca)  # https with a CA to pin; plain http only to this machine
    if ca and not _is_file(ca):
        raise ConfigError(f"CA file {ca} does not exist")
    if need_token and not token:
        raise ConfigError("no token: run `dvic login URL`, or pass --token-file FILE (or set DVIC_TOKEN)")
    return Settings(server=server, token=token, ca=ca)
