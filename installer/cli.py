"""``dvic add-node`` and ``dvic remove-node``: argument parsing, prompts and progress printing."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from dvic_core.constants import NODE_KINDS

from .demos import Demo, check_demos, check_shell_user, parse_demo, parse_demo_cmd
from .errors import CannotAsk, InstallerError
from .esp32 import add_esp32
from .flow import add_node, remove_node
from .hostkeys import check_pin
from .models import (
    AddNodeRequest,
    ConfirmAddress,
    Direct,
    Esp32Request,
    HostKeyPrompt,
    Jump,
    RemoveNodeRequest,
    ServerSpec,
    Source,
    Step,
    StepStatus,
    ViaNode,
)
from .paths import DEFAULT_TARGET_PATH
from .secret import Password

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: when the main `dvic` parser already set these, a subcommand must not reset them to None.
    parser.add_argument("--server", default=argparse.SUPPRESS, help="central server URL (env DVIC_SERVER)")
    parser.add_argument("--token", default=argparse.SUPPRESS, help="operator API token (env DVIC_TOKEN)")
    parser.add_argument("--ca", default=argparse.SUPPRESS, help="server CA file to pin (env DVIC_CA)")


def _add_ssh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", "-u", help="SSH user on the target (root, or a sudo user)")
    parser.add_argument("--port", "-p", type=int, default=22, help="SSH port on the target (default 22)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the SSH password from the first line of stdin instead of prompting")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--direct", action="store_true", help="connect from this machine (the default)")
    src.add_argument("--jump", metavar="USER@HOST[:PORT]", help="connect through an SSH jump host (keys/agent)")
    src.add_argument("--via", metavar="NODE",
                     help="connect through a node already in the fleet (its daemon opens the TCP connection)")
    parser.add_argument("--jump-identity", action="append", metavar="FILE",
                        help="private key for the jump host (repeatable; default: ~/.ssh keys and the agent)")
    parser.add_argument("--expect-host-key", default="", metavar="SHA256:...",
                        help="the target's host key fingerprint, instead of confirming it interactively")
    parser.add_argument("--expect-jump-host-key", default="", metavar="SHA256:...",
                        help="the jump host's key fingerprint, instead of confirming it interactively")
    parser.add_argument("--known-hosts", type=Path, metavar="FILE",
                        help="confirmed host keys (default: ~/.config/dvic/known_hosts)")
    parser.add_argument("--no-systemd", action="store_true",
                        help="target without systemd: start the daemon with setsid/nohup (not restarted at boot)")
    parser.add_argument("--prefix", default="", metavar="DIR",
                        help="install under DIR on the target (with --no-systemd; for tests and trials)")
    parser.add_argument("--target-path", default=DEFAULT_TARGET_PATH, metavar="PATH",
                        help="PATH the install script uses on the target to find its tools and python3")
    parser.add_argument("--connect-timeout", type=float, default=15.0, metavar="S", help="SSH timeout (s)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``add-node`` and ``remove-node``; each sets ``func(args) -> int`` (the exit code)."""
    add = subparsers.add_parser(
        "add-node", help="enroll a machine and install the node daemon on it over SSH",
        description="Enroll a new node at the central server and install its daemon over SSH, "
                    "or (--kind esp32) write a C header for an ESP32 board. See docs/add-node.md.",
    )
    add.add_argument("target", nargs="?", help="the machine's address (not for --kind esp32)")
    add.add_argument("--name", default="", help="node name (default: the target's hostname)")
    add.add_argument("--kind", default="desktop", choices=NODE_KINDS, help="node kind (default desktop)")
    add.add_argument("--group", default="", help="group, e.g. a room")
    add.add_argument("--python", default="", metavar="PATH", help="Python >= 3.8 interpreter on the target")
    add.add_argument("--online-timeout", type=float, default=60.0, metavar="S",
                     help="how long to wait for the node to come online (default 60 s)")
    add.add_argument("--demo", action="append", default=[], metavar="NAME=UNIT",
                     help="a demo the console can start/stop/restart through its systemd unit (repeatable); "
                          "any --demo/--demo-cmd replaces the node's demos.json, none keeps it")
    add.add_argument("--demo-cmd", action="append", default=[], metavar="NAME=COMMAND",
                     help="a demo started with a shell command and stopped by a signal (TERM, then KILL after 10 s; "
                          "repeatable)")
    add.add_argument("--shell-user", default="", metavar="USER",
                     help="user whose login shell remote shells run (default: root); must exist on the target")
    add.add_argument("--out", type=Path, metavar="FILE.h", help="ESP32: where to write the C header")
    add.add_argument("--force", action="store_true", help="ESP32: overwrite --out if it exists")
    _add_ssh_options(add)
    _add_server_options(add)
    add.set_defaults(func=cmd_add_node)

    rm = subparsers.add_parser(
        "remove-node", help="revoke a node (and with --uninstall remove its daemon over SSH)",
        description="Revoke a node at the central server; with --uninstall also stop and remove its "
                    "daemon over SSH (--host, --user).",
    )
    rm.add_argument("node", help="node name or UUID")
    rm.add_argument("--uninstall", action="store_true", help="also remove the daemon from the machine over SSH")
    rm.add_argument("--host", default="",
                    help="with --uninstall: the machine's address (without it, the address the node reported "
                         "is used only once you confirm it on the terminal)")
    _add_ssh_options(rm)
    _add_server_options(rm)
    rm.set_defaults(func=cmd_remove_node)


def _server(args: argparse.Namespace) -> ServerSpec:
    # Under `dvic`, the main command resolves options, environment and the stored `dvic login`.
    resolve = getattr(args, "resolve_settings", None)
    if resolve is not None:
        settings = resolve()
        return ServerSpec(url=settings.server, token=settings.token or "", ca_path=settings.ca or "")
    return ServerSpec(
        url=getattr(args, "server", None) or os.environ.get("DVIC_SERVER", ""),
        token=getattr(args, "token", None) or os.environ.get("DVIC_TOKEN", ""),
        ca_path=getattr(args, "ca", None) or os.environ.get("DVIC_CA", ""),
    )


def _source(args: argparse.Namespace) -> Source:
    if args.via:
        return ViaNode(args.via)
    if args.jump:
        user, _, hostport = args.jump.rpartition("@")
        host, port = hostport, 22
        if hostport.startswith("["):  # [v6addr]:port
            host, _, rest = hostport[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 22
        elif hostport.count(":") == 1:
            host, _, p = hostport.partition(":")
            port = int(p)
        if not host:
            raise ValueError(f"--jump {args.jump!r}: expected USER@HOST[:PORT]")
        return Jump(host=host, port=port, user=user, client_keys=args.jump_identity,
                    expect_host_key=args.expect_jump_host_key)
    return Direct()


def _demos(args: argparse.Namespace) -> list[Demo] | None:
    """The demos to write (None: keep the node's demos.json); bad values fail before any prompt."""
    if not args.demo and not args.demo_cmd:
        return None
    return check_demos([parse_demo(v) for v in args.demo] + [parse_demo_cmd(v) for v in args.demo_cmd])


def _read_password(args: argparse.Namespace, user: str, host: str) -> Password:
    if args.password_stdin:
        # The raw stream: the buffered one would keep a read-ahead copy of the line.
        raw: Any = getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
        return Password.from_stream(raw)
    return Password.prompt(f"SSH password for {user}@{host}: ")


# Text from the target (os name, hostname, script output) and from the server reaches the terminal:
# every control character is shown as a visible mark, so no escape sequence in it can act (an OSC 52
# would write the operator's clipboard). The installer does not import tui (docs/add-node.md), hence
# this small local filter rather than tui.textsafe.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    def mark(match: re.Match[str]) -> str:
        code = ord(match.group())
        return chr(0x2400 + code) if code < 0x20 else "\u2421" if code == 0x7F else "\ufffd"

    return _UNPRINTABLE.sub(mark, text)


def _say(text: str, out: TextIO) -> None:
    print(_printable(text), file=out, flush=True)


_TTY = "/dev/tty"


async def _ask_tty(question: str) -> bool:
    """Ask a yes/no question on the controlling terminal (stdin may carry --password-stdin's line).

    The terminal is read through the event loop, so Ctrl-C cancels the question at once. No
    terminal raises CannotAsk: nobody said yes.
    """
    try:
        fd = os.open(_TTY, os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        raise CannotAsk(f"there is no terminal to ask on: {exc.strerror or exc}") from exc
    try:
        os.write(fd, _printable(question).encode())
        os.set_blocking(fd, False)
        return (await _read_line(fd)).strip().lower() in ("y", "yes")
    finally:
        os.close(fd)


async def _read_line(fd: int) -> str:
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    line = bytearray()
    try:
        while b"\n" not in line:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(fd, 256)
            except BlockingIOError:
                continue
            if not chunk:  # end of input (Ctrl-D): no answer
                break
            line += chunk
    finally:
        loop.remove_reader(fd)
    return line.split(b"\n", 1)[0].decode(errors="replace")


async def _confirm(prompt: HostKeyPrompt) -> bool:
    return await _ask_tty(
        f"The {prompt.role} host {prompt.host}:{prompt.port} is not known yet.\n"
        f"Its {prompt.key_type} key fingerprint is {prompt.fingerprint}.\n"
        "Check it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub).\n"
        "Trust this key and continue? [y/N] ")


def _confirm_address(user: str, port: int) -> ConfirmAddress:
    async def confirm(node: str, address: str) -> bool:
        return await _ask_tty(
            f"No --host given: {node} reported its own address as {address}.\n"
            "A node's report is not proof: a compromised node can name a machine that collects the password.\n"
            f"Connect to {user}@{address}:{port} and send the SSH password there? [y/N] ")

    return confirm


class _Printer:
    """Prints each step as it ends, with its duration, and the total."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.total = 0.0

    def __call__(self, step: Step) -> None:
        if step.status == StepStatus.RUNNING:
            # A step that says what it is about to do (where it connects) always says it.
            if step.message or self.out.isatty():
                _say(f"  {step.name:<9} ...    {step.message}".rstrip(), self.out)
            return
        self.total += step.duration
        mark = {"ok": "ok", "skipped": "skip", "failed": "FAILED"}.get(step.status.value, step.status.value)
        detail = step.error if step.status == StepStatus.FAILED and step.error else step.message or step.error
        _say(f"  {step.name:<9} {mark:<6} {step.duration:6.2f} s  {detail}".rstrip(), self.out)


def _fail(err: InstallerError, out: TextIO) -> int:
    out.flush()
    _say(f"error in step '{err.step}': {err.message}", sys.stderr)
    if err.hint:
        _say(f"what to do: {err.hint}", sys.stderr)
    return EXIT_FAILED


def _check_pins(args: argparse.Namespace) -> None:
    """Malformed fingerprints are usage errors, found before any password prompt or connection."""
    check_pin("--expect-host-key", args.expect_host_key)
    check_pin("--expect-jump-host-key", args.expect_jump_host_key)


def cmd_add_node(args: argparse.Namespace) -> int:
    out = sys.stdout
    printer = _Printer(out)
    server = _server(args)
    try:
        if args.kind == "esp32":
            if not args.name or not args.out:
                print("error: --kind esp32 needs --name N and --out FILE.h", file=sys.stderr)
                return EXIT_USAGE
            result = asyncio.run(add_esp32(Esp32Request(name=args.name, out=args.out, server=server,
                                                        group=args.group, force=args.force), printer))
            _say(f"ESP32 node {result.name} ({result.node_id}) enrolled; header written to {result.header_path} "
                 f"(total {printer.total:.2f} s). Keep that file secret.", out)
            return EXIT_OK
        if not args.target or not args.user:
            print("error: add-node needs TARGET and --user (or --kind esp32 --name N --out FILE.h)", file=sys.stderr)
            return EXIT_USAGE
        _check_pins(args)
        source = _source(args)
        demos = _demos(args)
        check_shell_user(args.shell_user)
        password = _read_password(args, args.user, args.target)
        request = AddNodeRequest(
            host=args.target, user=args.user, password=password, server=server, port=args.port, source=source,
            name=args.name, kind=args.kind, group=args.group, expect_host_key=args.expect_host_key,
            confirm_host_key=_confirm, known_hosts=args.known_hosts, prefix=args.prefix,
            init="none" if args.no_systemd else "systemd", python=args.python, target_path=args.target_path,
            connect_timeout=args.connect_timeout, online_timeout=args.online_timeout,
            demos=demos, shell_user=args.shell_user,
        )
        _say(f"Adding {args.target} as a node:", out)
        result = asyncio.run(add_node(request, printer))
    except InstallerError as err:
        return _fail(err, out)
    except ValueError as err:
        _say(f"error: {err}", sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: an enrollment made by this run was revoked and the target rolled back", file=sys.stderr)
        return 130
    how = "repaired in place (same identity)" if result.reused_identity else "enrolled and installed"
    _say(f"Node {result.name} ({result.node_id}) is online: {how} in {printer.total:.2f} s.", out)
    return EXIT_OK


def cmd_remove_node(args: argparse.Namespace) -> int:
    out = sys.stdout
    printer = _Printer(out)
    try:
        password = None
        if args.uninstall:
            if not args.user:
                print("error: --uninstall needs --user (and --host ADDRESS, or your confirmation of the address "
                      "the node reported)", file=sys.stderr)
                return EXIT_USAGE
            _check_pins(args)
            password = _read_password(args, args.user, args.host or f"{args.node}'s machine")
        request = RemoveNodeRequest(
            node=args.node, server=_server(args), uninstall=args.uninstall, host=args.host, user=args.user or "",
            password=password, port=args.port, source=_source(args), expect_host_key=args.expect_host_key,
            confirm_host_key=_confirm, confirm_address=_confirm_address(args.user, args.port),
            known_hosts=args.known_hosts, prefix=args.prefix,
            init="none" if args.no_systemd else "systemd", target_path=args.target_path,
            connect_timeout=args.connect_timeout,
        )
        asyncio.run(remove_node(request, printer))
    except InstallerError as err:
        return _fail(err, out)
    except ValueError as err:
        _say(f"error: {err}", sys.stderr)
        return EXIT_USAGE
    _say(f"Node {args.node} removed" + (" and uninstalled." if args.uninstall else " (revoked)."), out)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m installer``), same options as under ``dvic``."""
    parser = argparse.ArgumentParser(prog="dvic")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))
