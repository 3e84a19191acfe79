"""`dvic demo …`, `dvic deploy`, `dvic undeploy` against the real server (no daemon: nodes stay offline).
The module's tests share one server: names (nodes, accounts, demos) are each test's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.cli import ROOT, DvicRunner
from tests.support.server import CentralServer

EXAMPLE = ROOT / "examples" / "hello-demo"


async def test_publish_list_deploy_and_status(shared_server: CentralServer, dvic: DvicRunner,
                                              tmp_path: Path) -> None:
    shared_server.enroll("pi-1", group="hall-a")
    shared_server.enroll("pi-2", group="hall-a")
    work = tmp_path / "hello"
    shutil.copytree(EXAMPLE, work)
    (work / "__pycache__").mkdir()
    (work / "__pycache__" / "junk.pyc").write_bytes(b"x")

    published = await dvic("demo", "publish", str(work), "--json")
    assert published.code == 0, published.err
    doc = json.loads(published.out)
    assert (doc["name"], doc["version"], doc["created"]) == ("hello-demo", "1.0.0", True)
    assert doc["members"] == 2  # dvic-demo.toml and app.py: nothing from __pycache__, no root entry
    again = await dvic("demo", "publish", str(work), "--version", "1.0.1")
    assert again.code == 0 and again.out.startswith("published: hello-demo 1.0.1"), again.err

    listing = await dvic("demo", "list")
    assert listing.code == 0 and "hello-demo" in listing.out and "1.0.1" in listing.out
    releases = json.loads((await dvic("demo", "releases", "hello-demo", "--json")).out)["releases"]
    assert [r["version"] for r in releases] == ["1.0.0", "1.0.1"]

    # a group is confirmed first: without a terminal and without --yes nothing is sent
    refused = await dvic("deploy", "hello-demo@1.0.0", "--group", "hall-a")
    assert refused.code == 2
    assert "deploy hello-demo 1.0.0 on 2 node(s) of group 'hall-a': confirm with --yes" in refused.err
    assert json.loads((await dvic("demo", "deployments", "--json")).out)["deployments"] == []

    deployed = await dvic("deploy", "hello-demo@1.0.0", "--group", "hall-a", "--yes", "--batch", "1")
    assert deployed.code == 0, deployed.err
    assert "deploy hello-demo 1.0.0 to hall-a: done (2 node(s) offline" in deployed.out
    status = json.loads((await dvic("demo", "status", "--json")).out)["status"]
    assert {(r["node_name"], r["desired_version"], r["version"]) for r in status} == {
        ("pi-1", "1.0.0", None), ("pi-2", "1.0.0", None)}
    table = await dvic("demo", "status", "hello-demo")
    assert "pi-1" in table.out and "- (wants 1.0.0)" in table.out and "(node new)" in table.out

    node = await dvic("deploy", "hello-demo@1.0.1", "--node", "pi-1", "--json")  # a node: no question
    assert node.code == 0 and json.loads(node.out)["version"] == "1.0.1"
    back = await dvic("demo", "rollback", "hello-demo", "--node", "pi-1", "--json")
    assert back.code == 0 and json.loads(back.out)["version"] == "1.0.0"
    gone = await dvic("undeploy", "hello-demo", "--group", "hall-a", "--yes")
    assert gone.code == 0, gone.err
    deployments = json.loads((await dvic("demo", "deployments", "hello-demo", "--json")).out)["deployments"]
    assert [d["kind"] for d in deployments] == ["undeploy", "rollback", "deploy", "deploy"]
    shown = await dvic("demo", "deployment", deployments[-1]["id"])
    assert shown.code == 0 and "pi-1" in shown.out and "BATCH" in shown.out


async def test_errors_and_roles(shared_server: CentralServer, dvic: DvicRunner, tmp_path: Path) -> None:
    shared_server.enroll("pi-9")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dvic-demo.toml").write_text('name = "x"\nversion = "1.0.0"\nrun = ["a"]\nrestart = "often"\n')
    refused = await dvic("demo", "publish", str(bad))
    assert refused.code == 1
    assert "dvic-demo.toml:4: restart: expected one of always, on-failure, never" in refused.err
    assert "bad_manifest, HTTP 400" in refused.err
    empty = tmp_path / "empty"
    empty.mkdir()
    usage = await dvic("demo", "publish", str(empty))
    assert usage.code == 2 and "no dvic-demo.toml in this directory" in usage.err
    usage = await dvic("deploy", "hello-demo", "--node", "pi-9")
    assert usage.code == 2 and "give the release as NAME@VERSION" in usage.err
    missing = await dvic("deploy", "ghost@1.0.0", "--node", "pi-9")
    assert missing.code == 1 and "no release ghost 1.0.0" in missing.err
    viewer = dvic.operator("cli-viewer", "viewer")
    denied = await dvic("demo", "publish", str(EXAMPLE), token=viewer)
    assert denied.code == 1 and "forbidden" in denied.err
    assert (await dvic("demo", "list", token=viewer)).code == 0
