"""The installer's public data: what to install where (request), what happened (steps, result)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .demos import Demo
from .paths import DEFAULT_TARGET_PATH, daemon_source, unit_template
from .secret import Password

# Step names in the order they run. SSH comes before enrollment on purpose: a typo in the
# password or an unreachable target then costs nothing at the server (no enrollment to revoke),
# and the check tells us whether the target already has a valid identity to keep.
STEP_NAMES = ("connect", "check", "enroll", "render", "install", "online")
ESP32_STEP_NAMES = ("enroll", "render", "write")
REMOVE_STEP_NAMES = ("revoke", "connect", "uninstall")



class StepStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class Step:
    """One step as reported to the progress callback (once when it starts, once when it ends)."""

    name: str
    status: StepStatus = StepStatus.RUNNING
    duration: float = 0.0
    message: str = ""
    error: str = ""
    code: str = ""
    hint: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status.value,
            "duration": round(self.duration, 3),
            "message": self.message,
            "error": self.error,
            "code": self.code,
            "hint": self.hint,
        }


ProgressCallback = Callable[[Step], None]


@dataclass(frozen=True)
class ServerSpec:
    """How to reach the central server's operator API."""

    url: str
    token: str
    ca_path: str = ""  # PEM file to pin; an https server needs one (tui/api/tls.py: no system trust store)

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"ServerSpec(url={self.url!r}, ca_path={self.ca_path!r})"


@dataclass(frozen=True)
class Direct:
    """Connect to the target from this machine."""


@dataclass(frozen=True)
class Jump:
    """Connect through an SSH jump host (authenticated with keys or the agent, never a password)."""

    host: str
    port: int = 22
    user: str = ""
    client_keys: Sequence[str] | None = None  # None: asyncssh's defaults (~/.ssh/id_*, agent)
    expect_host_key: str = ""


@dataclass(frozen=True)
class ViaNode:
    """Connect through the TCP tunnel of a node already in the fleet (needs issue 4)."""

    node: str


Source = Direct | Jump | ViaNode


@dataclass(frozen=True)
class HostKeyPrompt:
    """A host key seen for the first time, shown to the operator to confirm."""

    role: str  # "target" or "jump"
    host: str
    port: int
    key_type: str
    fingerprint: str  # "SHA256:..." as OpenSSH prints it


ConfirmHostKey = Callable[[HostKeyPrompt], Awaitable[bool]]
# remove-node --uninstall without --host: (node name, address the node reported) -> may the
# password be sent there? May raise errors.CannotAsk (no terminal).
ConfirmAddress = Callable[[str, str], Awaitable[bool]]


@dataclass
class AddNodeRequest:
    """Everything ``add_node`` needs. ``password`` is wiped when ``add_node`` returns."""

    host: str
    user: str
    password: Password
    server: ServerSpec
    port: int = 22
    source: Source = field(default_factory=Direct)
    name: str = ""  # default: the target's hostname
    kind: str = "desktop"
    group: str = ""
    expect_host_key: str = ""
    confirm_host_key: ConfirmHostKey | None = None
    known_hosts: Path | None = None  # default: paths.known_hosts_path()
    # Target side: install under a prefix and/or without systemd (documented in docs/add-node.md).
    prefix: str = ""
    init: str = "systemd"  # "systemd" or "none"
    python: str = ""  # interpreter on the target; default: python3 found in target_path
    target_path: str = DEFAULT_TARGET_PATH
    # Demo actions (STATE_DIR/demos.json): None keeps the installed file; a list replaces it.
    demos: list[Demo] | None = None
    shell_user: str = ""  # user of remote shells (--shell-user); "" = the daemon's default (root)
    daemon_source: Path = field(default_factory=daemon_source)
    unit_template: Path = field(default_factory=unit_template)
    connect_timeout: float = 15.0
    online_timeout: float = 60.0


@dataclass
class AddNodeResult:
    node_id: str
    name: str
    reused_identity: bool
    steps: list[Step]
    header_path: str = ""  # ESP32 only


@dataclass
class Esp32Request:
    name: str
    out: Path
    server: ServerSpec
    group: str = ""
    force: bool = False


@dataclass
class RemoveNodeRequest:
    node: str
    server: ServerSpec
    uninstall: bool = False
    # Only with uninstall:
    host: str = ""
    user: str = ""
    password: Password | None = None
    port: int = 22
    source: Source = field(default_factory=Direct)
    expect_host_key: str = ""
    confirm_host_key: ConfirmHostKey | None = None
    # Without ``host``, the address the node reported is used only if this confirms it (L7).
    confirm_address: ConfirmAddress | None = None
    known_hosts: Path | None = None
    prefix: str = ""
    init: str = "systemd"
    target_path: str = DEFAULT_TARGET_PATH
    connect_timeout: float = 15.0
