"""Rendering: the systemd unit from its template, and the install script with its embedded payload."""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Mapping
from typing import Any

from .demos import check_shell_user
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


def render_unit(template: str, python: str, layout: NodeLayout, shell_user: str = "") -> str:
    """Fill the unit template's placeholders; every placeholder must be present exactly as documented.

    ``shell_user`` (already checked by ``demos.check_shell_user``) is appended to the one ExecStart line.
    """
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
    if check_shell_user(shell_user):
        text = _add_exec_arg(text, f"--shell-user {shell_user}")
    return text


def _add_exec_arg(unit: str, arg: str) -> str:
    """Append an argument to the unit's single ExecStart= line (the template is not ours to edit)."""
    lines = unit.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(starts) != 1:
        raise RenderError(f"the unit template must have exactly one ExecStart= line to add {arg} (has {len(starts)})")
    i = starts[0]
    if lines[i].rstrip().endswith("\\"):
        raise RenderError("the unit template's ExecStart= line continues on the next line: cannot add " + arg)
    lines[i] = lines[i].rstrip() + " " + arg
    return "\n".join(lines)


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
    shell_user: str = "",
    demos: Mapping[str, Any] | None = None,
) -> str:
    """The install script for one mode. Only ``install`` without ``keep_bundle`` carries the secret bundle.

    ``demos`` (the content of demos.json) replaces the installed file; None keeps whatever is there.
    ``shell_user`` must exist on the target (checked in every mode) and goes on the daemon's command line.
    """
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
        if demos is not None:
            payload += _heredoc_function("write_demos", json.dumps(demos, indent=2, sort_keys=True) + "\n")

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
        "@SHELL_USER@": check_shell_user(shell_user),
        "@WRITE_DEMOS@": "1" if mode == "install" and demos is not None else "0",
    }
    text = TEMPLATE
    for key, value in values.items():
        text = text.replace(key, shlex.quote(value))
    # The payload goes in last so that nothing inside it is ever taken for a placeholder.
    return text.replace("@PAYLOAD@", payload)
