"""Where things live: the operator's dvic config dir, the node layout on a target, the daemon sources."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import node_script

# The daemon and its unit template ship as the node_script package's data, wherever it is installed.
DEFAULT_DAEMON_SOURCE = node_script.DAEMON
DEFAULT_UNIT_TEMPLATE = node_script.UNIT_TEMPLATE


def daemon_source() -> Path:
    """The daemon file to install: ``$DVIC_NODE_DAEMON`` (a patched build) or node_script/dvic_node.py."""
    return Path(os.environ.get("DVIC_NODE_DAEMON") or DEFAULT_DAEMON_SOURCE)


def unit_template() -> Path:
    """The systemd unit template: ``$DVIC_NODE_UNIT_TEMPLATE`` or node_script/dvic-node.service."""
    return Path(os.environ.get("DVIC_NODE_UNIT_TEMPLATE") or DEFAULT_UNIT_TEMPLATE)

# The PATH the install script uses on the target. Fixed (not the login user's PATH) because the
# interpreter found here runs as root: a user-writable directory must never be searched.
DEFAULT_TARGET_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def config_dir() -> Path:
    """The dvic config dir: ``$XDG_CONFIG_HOME/dvic`` or ``~/.config/dvic``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "dvic"


def known_hosts_path() -> Path:
    """The SSH host keys the operator confirmed for ``dvic add-node``."""
    return config_dir() / "known_hosts"


@dataclass(frozen=True)
class NodeLayout:
    """Paths of an installed node on the target (decided by the lead; ``prefix`` is for tests/no-root)."""

    prefix: str = ""

    def _p(self, path: str) -> str:
        return self.prefix.rstrip("/") + path if self.prefix else path

    @property
    def daemon(self) -> str:
        return self._p("/opt/dvic-node/dvic_node.py")

    @property
    def bundle(self) -> str:
        return self._p("/etc/dvic-node/bundle.json")

    @property
    def state_dir(self) -> str:
        return self._p("/var/lib/dvic-node")

    @property
    def unit(self) -> str:
        return self._p("/etc/systemd/system/dvic-node.service")
