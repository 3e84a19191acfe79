"""The node protocol's message types are declared once (dvic_core/messages.py); the server's dispatch
table, the daemon's own copy, the shared vectors and docs/protocol.md all agree with it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import dvic_node
import pytest

from central import nodehub
from central.messages import parse_node_message
from dvic_core import messages as registry
from dvic_core.constants import NAME_PATTERN
from dvic_core.messages import MESSAGES, NODE, SERVER, sent_by
from dvic_core.schema import SchemaError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "node_messages.json").read_text())
DAEMON = ROOT / "node_script" / "dvic_node.py"


def daemon_types() -> tuple[set[str], set[str]]:
    """(types the daemon sends, types it handles), read from its source: the `"type": "..."` of its
    dict literals, and the keys of its `_handlers` table."""
    tree = ast.parse(DAEMON.read_text())
    sends, handles = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            sends |= {v.value for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value == "type" and isinstance(v, ast.Constant)}
        table = None
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "_handlers"
                                                for t in node.targets):
            table = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
              and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "_handlers"):
            table = node.args[0]
        if isinstance(table, ast.Dict):
            handles |= {k.value for k in table.keys if isinstance(k, ast.Constant)}
    return sends, handles


def test_the_daemon_sends_and_handles_the_registered_types() -> None:
    sends, handles = daemon_types()
    assert sends == set(sent_by(NODE))
    assert handles == set(sent_by(SERVER))


def test_the_daemon_limits_are_the_protocols() -> None:
    assert dvic_node.MAX_FRAME == registry.MAX_FRAME_BYTES
    assert dvic_node.MAX_BATCH_LINES == registry.MAX_BATCH_LINES
    assert dvic_node.MAX_MSG_BYTES == registry.MAX_MSG_BYTES
    assert dvic_node.MAX_PAYLOAD == registry.MAX_CHUNK_BYTES


def test_the_daemon_demo_rules_are_the_protocols() -> None:
    assert dvic_node.DEMO_NAME_RE.pattern == f"^{NAME_PATTERN}$"
    assert dvic_node.DEMO_VERSION_RE.pattern == f"^{registry.DEMO_VERSION}$"
    assert dvic_node.SHA256_HEX_RE.pattern == f"^{registry.SHA256_HEX}$"
    assert dvic_node.INSTALL_STATES == registry.DEMO_INSTALL_STATES[:len(dvic_node.INSTALL_STATES)]
    assert dvic_node.MAX_DESIRED_DEMOS == registry.MAX_DESIRED_DEMOS


def test_the_daemon_takes_a_desired_demo_the_registry_declares() -> None:
    push = next(m for m in VECTORS["server"] if m["type"] == "demos_desired")
    assert dvic_node.parse_desired(push["demos"][0])["name"] == "robot-arm"


def test_every_node_message_has_one_handler_on_the_server() -> None:
    assert set(nodehub.HANDLERS) == set(sent_by(NODE))


def test_every_type_has_a_vector() -> None:
    assert {v["type"] for v in VECTORS["valid"]} == set(sent_by(NODE))
    assert {v["type"] for v in VECTORS["server"]} == set(sent_by(SERVER))


@pytest.mark.parametrize("message", VECTORS["server"], ids=lambda m: m["type"])
def test_server_vectors_fit_their_declaration(message: dict[str, Any]) -> None:
    parsed = MESSAGES[message["type"]].parse(message)
    assert parsed["type"] == message["type"]


@pytest.mark.parametrize("message", VECTORS["valid"], ids=lambda m: m["type"])
def test_node_vectors_keep_their_fields(message: dict[str, Any]) -> None:
    parsed = parse_node_message(json.dumps(message))
    # Every field of a vector is one the server keeps (cleaned perhaps, never dropped).
    assert set(message) <= set(parsed), set(message) - set(parsed)


def test_a_server_message_is_not_one_a_node_may_send() -> None:
    with pytest.raises(Exception, match="unknown message type 'exec'"):
        parse_node_message(json.dumps(VECTORS["server"][3]))


def test_every_type_has_a_heading_in_the_protocol_doc() -> None:
    headings = set(re.findall(r"^#{3,4} `(\w+)`", (ROOT / "docs" / "protocol.md").read_text(), re.M))
    assert set(MESSAGES) <= headings, set(MESSAGES) - headings


def test_a_type_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        registry._declare("hello", (NODE,), {})


def test_a_bad_field_names_its_place() -> None:
    line = {"seq": 1, "ts": 1.0, "source": "demo", "level": "INFO", "msg": "x"}
    with pytest.raises(SchemaError, match=r"^lines\[1\]\.level: expected one of DEBUG"):
        MESSAGES["logs"].parse({"lines": [line, {**line, "level": "LOUD"}]})
