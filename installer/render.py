"""Rendering: the systemd unit from its template, and the install script with its embedded payload."""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Mapping
from typing import Any

from .install_sh import TEMPLATE
from .paths import NodeLayout

UNIT_PLACEHOLDERS = ("@PYTHON@", "@DAEMON@", "@BUNDLE@", "@STATE_DIR@")
# Paths go into a unit file and unquoted shell lists: keep them to characters needing no quoting.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]*$")
INIT_MODES = ("systemd", "none")
SCRIPT_MODES = ("check", "install", "uninstall")


class RenderError(ValueError):
    """The inputs cannot make a correct script or unit (message says which and why)."""


def check_path(what: str, path: str) -> str:
    if not _SAFE_PATH.match(path) or "/../" in path + "/":
        raise RenderError(f"{what} {path!r} must be an absolute path of letters, digits and . _ + - /")
    return path


def render_unit(template: str, python: str, layout: NodeLayout) -> str:
    """Fill the unit template's placeholders; every placeholder must be present exactly as documented."""
    missing = [p for p in UNIT_PLACEHOLDERS if p not in template]
    if "@DAEMON@" in missing or "@BUNDLE@" in missing:
        raise RenderError(f"the unit template lacks {', '.join(missing)}")
    values = {
        "@PYTHON@": check_path("python", python),
        "@DAEMON@": check_path("daemon path", layout.daemon),
        "@BUNDLE@": check_path("bundle path", layout.bundle),
        "@STATE_DIR@": check_path("state dir", layout.state_dir),
    }
    text = template
    for key, value in values.items():
        text = text.replace(key, value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise RenderError(f"the unit template has unknown placeholders: {', '.join(sorted(set(leftover)))}")
    return text


def _heredoc_function(name: str, content: str) -> str:
    """A shell function writing ``content`` verbatim to "$1" through a quoted here-document."""
    if "\0" in content:
        raise RenderError(f"{name}: payload contains a NUL byte")
    if not content.endswith("\n"):
        content += "\n"
    lines = set(content.splitlines())
    while True:
        delim = "DVIC_PAYLOAD_" + secrets.token_hex(8).upper()
        if delim not in lines:
            break
    return f"{name}() {{\ncat >\"$1\" <<'{delim}'\n{content}{delim}\n}}\n"


def render_script(
    mode: str,
    *,
    layout: NodeLayout,
    init: str,
    python: str = "",
    target_path: str,
    keep_bundle: bool = False,
    expect_node_id: str = "",
    daemon_text: str = "",
    bundle: Mapping[str, Any] | None = None,
    unit_text: str = "",
) -> str:
    """The install script for one mode. Only ``install`` without ``keep_bundle`` carries the secret bundle."""
    if mode not in SCRIPT_MODES:
        raise RenderError(f"unknown script mode {mode!r}")
    if init not in INIT_MODES:
        raise RenderError(f"init must be one of {', '.join(INIT_MODES)}, not {init!r}")
    for part in target_path.split(":"):
        check_path("target PATH entry", part)
    if python:
        check_path("python", python)
    for what, path in (("daemon", layout.daemon), ("bundle", layout.bundle),
                       ("state dir", layout.state_dir), ("unit", layout.unit)):
        check_path(what + " path", path)

    payload = ""
    if mode == "install":
        if not daemon_text or not unit_text:
            raise RenderError("install needs the daemon file and the unit text")
        if not keep_bundle and not bundle:
            raise RenderError("install needs a bundle unless the installed one is kept")
        if keep_bundle and not expect_node_id:
            raise RenderError("keeping the installed bundle needs the node id it must hold")
        payload += _heredoc_function("write_daemon", daemon_text)
        payload += _heredoc_function("write_unit", unit_text)
        if not keep_bundle:
            payload += _heredoc_function("write_bundle", json.dumps(bundle, separators=(",", ":")) + "\n")

    values = {
        "@TARGET_PATH@": target_path,
        "@INIT@": init,
        "@PYTHON@": python,
        "@KEEP_BUNDLE@": "1" if keep_bundle else "0",
        "@EXPECT_NODE_ID@": expect_node_id,
        "@DAEMON@": layout.daemon,
        "@BUNDLE@": layout.bundle,
        "@STATE_DIR@": layout.state_dir,
        "@UNIT@": layout.unit,
    }
    text = TEMPLATE
    for key, value in values.items():
        text = text.replace(key, shlex.quote(value))
    # The payload goes in last so that nothing inside it is ever taken for a placeholder.
    return text.replace("@PAYLOAD@", payload)
