"""The target in its own network namespace: reachable through the jump host only, never directly."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from installer import AddNodeRequest, InstallerError, Jump, Step, StepStatus, add_node

from .conftest import daemon_pid
from .fake_central import FakeCentral
from .netns import InetdJump, NetNamespace
from .sshd import Sshd


@dataclass
class Isolated:
    target: Sshd
    jump: Sshd
    inetd: InetdJump


@pytest.fixture
def isolated(ssh_user: str, jump_key: Path, tmp_path: Path) -> Iterator[Isolated]:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs unshare and nsenter (util-linux)")
    try:
        ns = NetNamespace(tmp_path)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    pub = Path(str(jump_key) + ".pub").read_text()
    target = jump = inetd = None
    try:
        target = Sshd(tmp_path / "ns-target", ssh_user, netns=ns.path).start()
        jump = Sshd(tmp_path / "ns-jump", ssh_user, authorized_keys=pub, netns=ns.path).start()
        inetd = InetdJump(jump, ns.path)
        yield Isolated(target, jump, inetd)
    finally:
        for part in (inetd, jump, target):
            if part is not None:
                part.stop() if isinstance(part, Sshd) else part.close()
        ns.close()


async def test_target_reachable_only_through_the_jump(
    make_request: Callable[..., AddNodeRequest], central: FakeCentral, isolated: Isolated, jump_key: Path,
    prefix: Path,
) -> None:
    target = isolated.target
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(port=target.port, expect_host_key=target.fingerprint))
    assert err.value.code == "unreachable"

    def server_sees_it(step: Step) -> None:
        # The daemon now runs inside the isolated namespace, where the test's server is out of
        # reach: play the server noticing it, so that this test stays about the SSH path.
        if step.name == "online" and step.status == StepStatus.RUNNING:
            for node in central.nodes.values():
                node["state"] = "online"

    source = Jump(host="127.0.0.1", port=isolated.inetd.port, user="dvic-it", client_keys=[str(jump_key)],
                  expect_host_key=isolated.jump.fingerprint)
    result = await add_node(make_request(port=target.port, expect_host_key=target.fingerprint, source=source),
                            server_sees_it)
    assert [s.status for s in result.steps] == [StepStatus.OK] * 6
    assert daemon_pid(prefix) is not None
    assert "Accepted publickey for dvic-it" in isolated.jump.log_path.read_text()
