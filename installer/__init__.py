"""``dvic add-node``: enroll a machine at the central server and install the node daemon over SSH."""

from .errors import CannotAsk, InstallerError, NotAvailableError
from .esp32 import add_esp32, render_header
from .events import add_node_events, parse_add_node_body
from .flow import add_node, remove_node
from .models import (
    STEP_NAMES,
    AddNodeRequest,
    AddNodeResult,
    Direct,
    Esp32Request,
    HostKeyPrompt,
    Jump,
    RemoveNodeRequest,
    ServerSpec,
    Step,
    StepStatus,
    ViaNode,
)
from .secret import Password
from .ssh import Tunnel

__all__ = [
    "STEP_NAMES",
    "AddNodeRequest",
    "AddNodeResult",
    "CannotAsk",
    "Direct",
    "Esp32Request",
    "HostKeyPrompt",
    "InstallerError",
    "Jump",
    "NotAvailableError",
    "Password",
    "RemoveNodeRequest",
    "ServerSpec",
    "Step",
    "StepStatus",
    "Tunnel",
    "ViaNode",
    "add_esp32",
    "add_node",
    "add_node_events",
    "remove_node",
    "parse_add_node_body",
    "render_header",
]
