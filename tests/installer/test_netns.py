"""The target in its own network namespace: reachable through the jump host only, never directly."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from installer import AddNodeRequest, InstallerError, Jump, StepStatus, add_node

from .conftest import Central, daemon_pid
from .netns import InetdJump, NetNamespace, PortBridge
from .sshd import Sshd


@dataclass
class Isolated:
    target: Sshd
    jump: Sshd
    inetd: InetdJump


@pytest.fixture
def isolated(ssh_user: str, jump_key: Path, central: Central, tmp_path: Path) -> Iterator[Isolated]:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs unshare and nsenter (util-linux)")
    try:
        ns = NetNamespace(tmp_path)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    pub = Path(str(jump_key) + ".pub").read_text()
    target = jump = inetd = bridge = None
    try:
        target = Sshd(tmp_path / "ns-target", ssh_user, netns=ns.path).start()
        jump = Sshd(tmp_path / "ns-jump", ssh_user, authorized_keys=pub, netns=ns.path).start()
        inetd = InetdJump(jump, ns.path)
        # The only way out of the namespace: to the server, so that the installed daemon comes online.
        bridge = PortBridge(ns.path, int(central.url.rsplit(":", 1)[1]))
        yield Isolated(target, jump, inetd)
    finally:
        for part in (bridge, inetd, jump, target):
            if part is not None:
                part.stop() if isinstance(part, Sshd) else part.close()
        ns.close()


async def test_target_reachable_only_through_the_jump(
    make_request: Callable[..., AddNodeRequest], central: Central, isolated: Isolated, jump_key: Path,
    prefix: Path,
) -> None:
    target = isolated.target
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(port=target.port, expect_host_key=target.fingerprint))
    assert err.value.code == "unreachable"

    source = Jump(host="127.0.0.1", port=isolated.inetd.port, user="dvic-it", client_keys=[str(jump_key)],
                  expect_host_key=isolated.jump.fingerprint)
    result = await add_node(make_request(port=target.port, expect_host_key=target.fingerprint, source=source))
    assert [s.status for s in result.steps] == [StepStatus.OK] * 6
    assert central.node(result.node_id)["state"] == "online"  # its daemon, inside, reached the server
    assert daemon_pid(prefix) is not None
    assert "Accepted publickey for dvic-it" in isolated.jump.log_path.read_text()
