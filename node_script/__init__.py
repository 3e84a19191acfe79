"""The node's files, shipped with dvic as package data: the daemon and its systemd unit template.

The installer copies them to a target, `dvic-central up` runs the daemon and the server publishes it
as its release: all of them find the files here, so a checkout, an editable install and a wheel
behave alike. Nothing imports the daemon through this package: on a node it runs alone.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

DAEMON = _HERE / "dvic_node.py"
UNIT_TEMPLATE = _HERE / "dvic-node.service"
