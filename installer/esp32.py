"""ESP32 boards: enroll and write a C header (server URL, CA, token, interval) for the firmware."""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from typing import Any

from dvic_core.files import write_private
from tui.api.errors import ApiError

from .api import connect_central
from .errors import InstallerError
from .models import AddNodeResult, Esp32Request, ProgressCallback
from .steps import StepRunner


def c_string(text: str) -> str:
    """A C string literal. Octal escapes (never \\x, which would swallow following hex digits)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def render_header(bundle: dict[str, Any]) -> str:
    """The header's text. It holds the node token: the file is written 0600 and must stay private."""
    for key in ("node_id", "name", "keepalive_url", "ca_pem", "token"):
        if not isinstance(bundle.get(key), str) or not bundle[key]:
            raise InstallerError("render", "bad_bundle", f"the server's bundle has no {key}", "")
    interval = bundle.get("interval", 5)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not 0 < interval <= 86400:
        raise InstallerError("render", "bad_bundle", f"the bundle's interval {interval!r} is not valid", "")
    ca_lines = bundle["ca_pem"].strip().splitlines()
    ca = "\n".join("    " + c_string(line + "\n") for line in ca_lines)
    return (
        "/* dvic_node_config.h: DVIC node identity for an ESP32 board, written by `dvic add-node --kind esp32`.\n"
        f" * Node {bundle['name']} ({bundle['node_id']}), generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.\n"
        " * SECRET: holds the node's keep-alive token. Do not commit it; revoke with `dvic remove-node`.\n"
        " * Usage: see docs/esp32.md. */\n"
        "#ifndef DVIC_NODE_CONFIG_H\n"
        "#define DVIC_NODE_CONFIG_H\n\n"
        f"#define DVIC_NODE_ID {c_string(bundle['node_id'])}\n"
        f"#define DVIC_NODE_NAME {c_string(bundle['name'])}\n"
        f"#define DVIC_SERVER_URL {c_string(str(bundle.get('server_url', '')))}\n"
        f"#define DVIC_KEEPALIVE_URL {c_string(bundle['keepalive_url'])}\n"
        f"#define DVIC_NODE_TOKEN {c_string(bundle['token'])}\n"
        f"#define DVIC_INTERVAL_MS {int(float(interval) * 1000)}UL\n\n"
        "/* The server's CA certificate: the board trusts only this CA (WiFiClientSecure::setCACert). */\n"
        "static const char DVIC_CA_PEM[] =\n"
        f"{ca};\n\n"
        "#endif /* DVIC_NODE_CONFIG_H */\n"
    )


def _check_out(request: Esp32Request) -> None:
    out = request.out
    if out.exists() and not request.force:
        raise InstallerError("enroll", "file_exists", f"{out} already exists",
                             "pick another --out, or pass --force to overwrite it")
    parent = out.parent if str(out.parent) else type(out)(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InstallerError("enroll", "bad_out", f"cannot write into {parent}", "pick a writable --out path")


async def add_esp32(
    request: Esp32Request, progress: ProgressCallback | None = None, central: Any = None
) -> AddNodeResult:
    """Enroll an ESP32 node and write its header. The enrollment is revoked if the header is not written."""
    runner = StepRunner(progress)
    _check_out(request)  # before enrolling: a bad path must cost nothing at the server
    async with AsyncExitStack() as stack:
        if central is None:
            central = await connect_central(stack, request.server, "enroll")
        async with runner.run("enroll") as step:
            bundle = await central.enroll(request.name, "esp32", request.group)
            node_id = str(bundle["node_id"])
            step.message = f"enrolled {bundle.get('name')} ({node_id})"
        try:
            async with runner.run("render") as step:
                text = render_header(bundle)
                step.message = f"{len(text)} bytes"
            async with runner.run("write") as step:
                try:
                    write_private(request.out, text)
                except OSError as exc:
                    raise InstallerError("write", "write_failed", f"cannot write {request.out}: {exc.strerror}",
                                         "pick a writable --out path; the enrollment was revoked") from exc
                step.message = f"{request.out} (mode 0600)"
        except BaseException:
            try:
                await central.revoke(node_id)
                runner.note("rollback", f"revoked the enrollment {node_id}")
            except ApiError as exc:
                runner.note("rollback", f"could not revoke {node_id} ({exc}): run dvic remove-node {node_id}")
            raise
    return AddNodeResult(node_id=node_id, name=str(bundle.get("name", request.name)), reused_identity=False,
                         steps=runner.steps, header_path=str(request.out))
