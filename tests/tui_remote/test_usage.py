"""Usage errors of the remote-control commands: exit 2, a specific message, nothing sent to a server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.cli import DVIC, ROOT

# Nothing listens there: a command that got as far as the network would fail with exit 3 instead.
SERVER = "https://127.0.0.1:9"


@pytest.mark.parametrize(("args", "message"), [
    (("run", "--all", "pi-1", "--", "true"), "give the targets once"),
    (("run", "pi-1"), "no command"),
    (("run", "--", "true"), "give the targets once"),
    (("run", "pi-1", "--timeout", "soon", "--", "true"), "invalid float value"),
    (("replay", "abc", "--speed", "0"), "expected a number above 0"),
    (("replay", "abc", "--idle-limit", "x"), "expected a number"),
    (("action", "pi-1", "reboot-demo"), "invalid choice"),
    (("maintenance", "pi-1", "maybe"), "invalid choice"),
    (("update",), "give the targets once"),
    (("update", "pi-1", "--group", "g"), "give the targets once"),
])
async def test_usage_errors_exit_2_before_any_request(args: tuple[str, ...], message: str,
                                                      dvic_env: dict[str, str], tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used: nothing is sent\n")
    proc = await asyncio.create_subprocess_exec(
        *DVIC, "--server", SERVER, "--ca", str(ca), "--token", "t", *args, env=dvic_env, cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, (out, err)
    assert message in err.decode(), err


def test_help_lists_the_remote_control_commands():
    import subprocess

    res = subprocess.run([sys.executable, "-m", "tui", "--help"], cwd=str(ROOT), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    for command in ("run", "commands", "command", "shell", "sessions", "replay", "reboot", "action", "actions",
                    "maintenance", "update", "release"):
        assert f"    {command} " in res.stdout, command


def _commands(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subs[0].choices) if subs else set()


def test_each_command_is_registered_by_the_module_the_table_names():
    """`dvic` imports only the module of the command given (tui/cli.py COMMAND_MODULES): the table
    must list every command, each with the module that registers it."""
    from tui import cli

    every = _commands(cli.build_parser(None))
    assert every == set(cli.COMMAND_MODULES)
    for module in set(cli.COMMAND_MODULES.values()):
        named = {command for command, owner in cli.COMMAND_MODULES.items() if owner == module}
        for command in named:
            assert _commands(cli.build_parser(command)) == named, f"{command} -> {module}"


@pytest.mark.parametrize(("argv", "command"), [
    (["run", "pi", "--", "true"], "run"),
    (["--server", "https://x:1", "--token=t", "shell", "pi"], "shell"),
    (["--ca", "run"], "console"),  # "run" is the value of --ca: no command word, the console
    ([], "console"),
    (["--help", "run"], None),  # None: the whole tree (help lists every command)
    (["--version"], None),
])
def test_the_command_word_is_found_after_the_main_options(argv: list[str], command: str | None):
    from tui.cli import command_of

    assert command_of(argv) == command
