"""`dvic-demo.toml`: parsed with tomllib, checked key by key, handed to nodes as JSON.

The rules are the daemon's (node_script/dvic_node.py `DemoSpec`, which checks the JSON again at
install): a manifest the server accepts is one every daemon accepts. An error names the file, the
key and, when the key is in the text, its line: `dvic-demo.toml:4: restart: expected one of ...`.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from dvic_core.constants import NODE_KINDS

MANIFEST_NAME = "dvic-demo.toml"
MAX_MANIFEST_BYTES = 64 * 1024

# The node-name rule (central/enroll.py) and the daemon's version rule: digits and dots, an optional
# -suffix; compared numerically (`version_key`).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
VERSION_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,7}(-[A-Za-z0-9._]{1,64})?")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
USER_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")
RESTART_POLICIES = ("always", "on-failure", "never")
# key -> (lowest, highest, default) in seconds
SECONDS = {"start_timeout_s": (1, 3600, 30), "heartbeat_s": (1, 86400, None), "stop_grace_s": (0, 600, 10)}
KEYS = ("name", "version", "run", "workdir", "env", "user", "restart", *SECONDS, "keep", "requires")
REQUIRES_KEYS = ("kinds", "arch", "groups")
MAX_ARGS = 256
MAX_ENV = 256
MAX_KEEP = 64
MAX_PATH = 1024


class ManifestError(ValueError):
    """A manifest that cannot be published; the message says where and what to change."""


def version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """'1.10.0' > '1.9.2'; a release without -suffix sorts after the same version with one."""
    number, _, suffix = version.partition("-")
    return tuple(int(p) for p in number.split(".")), 0 if suffix else 1, suffix


def key_line(text: str, table: str, key: str) -> int | None:
    """The line (1-based) where `key` of `table` ("" for the top) is set, or the table's header."""
    current = ""
    header_line = None
    key_re = re.compile(rf'\s*(?:{re.escape(key)}|"{re.escape(key)}"|\'{re.escape(key)}\')\s*=')
    dotted = re.compile(rf'\s*{re.escape(table)}\s*\.\s*{re.escape(key)}\s*=') if table else None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]", line)
        if header and not line.lstrip().startswith("[["):
            current = header.group(1).strip("\"'")
            if current == table:
                header_line = number
            continue
        if current == table and key_re.match(line):
            return number
        if current == "" and dotted is not None and dotted.match(line):
            return number
    return header_line


class _Checker:
    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.text = text

    def error(self, key: str, message: str, table: str = "") -> ManifestError:
        line = key_line(self.text, table, key.split("[")[0]) if key else None
        where = f"{self.filename}:{line}" if line else self.filename
        shown = f"{table}.{key}" if table else key
        return ManifestError(f"{where}: {shown}: {message}" if key else f"{where}: {message}")


def parse_manifest(raw: bytes, filename: str = MANIFEST_NAME, *, name: str | None = None,
                   version: str | None = None) -> dict[str, Any]:
    """The manifest as JSON-ready data, defaults filled in; `name`/`version` given override the file's."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{filename}: larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{filename}: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)"
        raise ManifestError(f"{filename}: not valid TOML: {exc}") from None
    if name is not None:
        doc["name"] = name
    if version is not None:
        doc["version"] = version
    return check_manifest(doc, _Checker(filename, text))


def check_manifest(doc: dict[str, Any], c: _Checker) -> dict[str, Any]:
    unknown = [k for k in doc if k not in KEYS]
    if unknown:
        raise c.error(unknown[0], f"unknown key (the keys are: {', '.join(KEYS)})")
    out: dict[str, Any] = {}
    for key, rule, what in (("name", NAME_RE, "a name of letters, digits, '.', '_' and '-' (at most 63, "
                                             "starting with a letter or digit)"),
                            ("version", VERSION_RE, "a version: digits and dots, an optional -suffix "
                                                    "(e.g. 1.4.0 or 2.0.0-rc1)")):
        value = doc.get(key)
        if value is None:
            raise c.error("", f"{key}: missing (give it in the file, or with --{key})")
        if not isinstance(value, str) or not rule.fullmatch(value):
            raise c.error(key, f"expected {what}, got {value!r}")
        out[key] = value
    out["run"] = _run(doc.get("run"), c)
    if "workdir" in doc:
        out["workdir"] = _relative(doc["workdir"], "workdir", c)
    if "env" in doc:
        out["env"] = _env(doc["env"], c)
    if "user" in doc:
        user = doc["user"]
        if not isinstance(user, str) or not USER_RE.fullmatch(user):
            raise c.error("user", f"expected a user name, got {user!r}")
        out["user"] = user
    restart = doc.get("restart", "always")
    if restart not in RESTART_POLICIES:
        raise c.error("restart", f"expected one of {', '.join(RESTART_POLICIES)}, got {restart!r}")
    out["restart"] = restart
    for key, (low, high, default) in SECONDS.items():
        value = doc.get(key, default)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise c.error(key, f"expected a number of seconds from {low} to {high}, got {value!r}")
        out[key] = value
    if "keep" in doc:
        keep = doc["keep"]
        if not isinstance(keep, list) or len(keep) > MAX_KEEP:
            raise c.error("keep", f"expected a list of at most {MAX_KEEP} relative paths")
        out["keep"] = [_relative(k, "keep", c) for k in keep]
    if "requires" in doc:
        out["requires"] = _requires(doc["requires"], c)
    return out


def _run(run: Any, c: _Checker) -> str | list[str]:
    if isinstance(run, str) and run.strip():
        return run
    if (isinstance(run, list) and 0 < len(run) <= MAX_ARGS and all(isinstance(a, str) and "\x00" not in a for a in run)
            and run[0]):
        return run
    if run is None:
        raise c.error("", "run: missing (an argument list, e.g. [\"python3\", \"app.py\"], or a shell line)")
    raise c.error("run", f"expected a non-empty list of at most {MAX_ARGS} strings or a shell line, got {run!r}")


def _relative(value: Any, key: str, c: _Checker) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH or "\x00" in value:
        raise c.error(key, f"expected a relative path, got {value!r}")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if value.startswith("/") or ".." in parts:
        raise c.error(key, f"{value!r} must stay inside the release (relative, no '..')")
    return value


def _env(env: Any, c: _Checker) -> dict[str, str]:
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise c.error("env", f"expected a table of at most {MAX_ENV} NAME = \"text\" entries")
    for key, value in env.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise c.error(key, "not a valid environment variable name", table="env")
        if not isinstance(value, str) or "\x00" in value:
            raise c.error(key, f"expected a string, got {value!r}", table="env")
    return dict(env)


def _requires(requires: Any, c: _Checker) -> dict[str, list[str]]:
    if not isinstance(requires, dict):
        raise c.error("requires", f"expected a table with {', '.join(REQUIRES_KEYS)}")
    out: dict[str, list[str]] = {}
    for key, value in requires.items():
        if key not in REQUIRES_KEYS:
            raise c.error(key, f"unknown key (the keys are: {', '.join(REQUIRES_KEYS)})", table="requires")
        if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value) \
                or len(value) > 64:
            raise c.error(key, "expected a list of names", table="requires")
        if key == "kinds" and (bad := [v for v in value if v not in NODE_KINDS]):
            raise c.error(key, f"unknown node kind {bad[0]!r} (kinds: {', '.join(NODE_KINDS)})", table="requires")
        out[key] = list(value)
    return out


def unmet_requirement(manifest: dict[str, Any], kind: str, group: str, arch: str) -> str | None:
    """Why a node does not fit the release's `requires` (None when it does)."""
    requires = manifest.get("requires") or {}
    if requires.get("kinds") and kind not in requires["kinds"]:
        return f"needs a node of kind {', '.join(requires['kinds'])} (this one is {kind})"
    if requires.get("arch") and arch not in requires["arch"]:
        return f"needs arch {', '.join(requires['arch'])} (this node is {arch or 'unknown'})"
    if requires.get("groups") and group not in requires["groups"]:
        return f"needs group {', '.join(requires['groups'])} (this node is in {group or 'no group'})"
    return None
