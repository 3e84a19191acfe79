"""The `dvic` command: parses the command line and runs a subcommand or the console.

Exit codes: 0 success, 1 the server refused or failed the request, 2 bad usage or missing
settings, 3 the server cannot be reached (or its certificate does not match the pinned CA),
130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from tui import __version__
from tui.api.config import ConfigError, Settings, resolve
from tui.api.errors import ApiError, Unreachable
from tui.api.pinning import PinError
from tui.cmds.common import UsageError

# argparse (with re and gettext) is imported by the functions that build parsers: `dvic run`'s usual
# command line is read without it (tui/cmds/run.py, `parse_fast`).
TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace

    Args = argparse.Namespace | SimpleNamespace
    # What a command's handler returns (None: success), at once or once awaited (most are coroutines).
    ExitCode = int | None

# The module of tui/cmds/ that registers each sub-command (its `add_parsers`). Only the module of the
# command given is imported: start-up is part of every command's time (`dvic run` answers in tens
# of milliseconds; the installer's module alone imports asyncssh). `--help`, no command or an
# unknown word build the whole tree. tests/tui_remote/test_usage.py checks this table.
COMMAND_MODULES: dict[str, str] = {
    "console": "console",
    "login": "login",
    "nodes": "fleet", "node": "fleet",
    "logs": "history", "events": "history",
    "operators": "operators",
    "run": "run",
    "commands": "commands", "command": "commands",
    "shell": "shell", "sessions": "shell", "replay": "shell",
    **{name: "actions" for name in ("reboot", "action", "actions", "maintenance", "update")},
    "release": "release",
    **{name: "alerts" for name in ("alerts", "alert", "silence", "rule")},
    "demo": "demos", "deploy": "demos", "undeploy": "demos",
    "add-node": "installer", "remove-node": "installer",
    "channel": "notify", "route": "notify", "notifications": "notify",
    **{name: "calendar" for name in ("calendar", "runbook", "book", "bookings")},
}
# The modules in the order `dvic --help` lists their commands.
MODULES = ("console", "login", "fleet", "history", "operators", "run", "commands", "shell", "actions", "release",
           "alerts", "notify", "demos", "calendar", "installer")


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    # tui/cmds/run.py's `parse_fast` reads these options too: keep both in step.
    g = parser.add_argument_group("connection (override `dvic login` and DVIC_* variables)")
    g.add_argument("--server", metavar="URL", default=default, help="server URL (env DVIC_SERVER)")
    g.add_argument("--token", metavar="T", default=default,
                   help="API token (env DVIC_TOKEN); other users see it in the process list: prefer --token-file")
    g.add_argument("--token-file", metavar="FILE", default=default,
                   help="read the API token from FILE (env DVIC_TOKEN_FILE)")
    g.add_argument("--ca", metavar="FILE", default=default, help="CA certificate to pin (env DVIC_CA)")


def warn_token_in_argv(args: object) -> None:
    """Once per run: a token given as --token is visible to every user of the machine (`ps`)."""
    if getattr(args, "token", None):
        print("dvic: warning: --token shows the token to every user of this machine (process list); "
              "use --token-file FILE or DVIC_TOKEN instead", file=sys.stderr)


def _register(name: str, sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    import importlib

    importlib.import_module(f"tui.cmds.{name}").add_parsers(sub, common)


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command word of `argv` after the main options ("console" when there is none), or None
    when an option such as --help needs the whole tree."""
    words = iter(argv)
    for word in words:
        if word in ("--server", "--token", "--token-file", "--ca"):
            next(words, None)
        elif word.startswith(("--server=", "--token=", "--token-file=", "--ca=")):
            continue
        elif word.startswith("-"):
            return None  # --help, --version, an unknown option: argparse answers with the whole tree
        else:
            return word
    return "console"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `dvic` parser: only `command`'s module registered when it is a known one, else all."""
    import argparse

    from tui.cmds.parsing import Parser

    # The connection options work before or after the subcommand: the subcommands' copies use
    # SUPPRESS so an absent option does not overwrite one given before the subcommand.
    common = Parser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)
    # No abbreviations at the top: the top parser reads every word, so a sub-command's `--to`
    # (dvic book ... --to T) would be an ambiguous prefix of --token and --token-file there.
    parser = Parser(
        prog="dvic", allow_abbrev=False,
        description="DVIC Demo Monitor: watch and drive the demo fleet. Without a command: the console.",
    )
    parser.add_argument("--version", action="version", version=f"dvic {__version__}")
    _connection_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    module = COMMAND_MODULES.get(command or "")
    for name in MODULES:
        if module is None or name == module:
            _register(name, sub, common)
    return parser


# Commands that end their process without the interpreter's teardown when `main` runs as the
# program: freeing every module and object costs about a fifth of `dvic run`'s own CPU time
# (docs/performance.md, "Remote control"), and nothing is left to clean up by then.
QUICK_EXIT = frozenset({"run"})


def main(argv: Sequence[str] | None = None) -> int:
    """`dvic ARGS`: the exit code. As the program (`argv` None) a QUICK_EXIT command ends the process."""
    words = sys.argv[1:] if argv is None else list(argv)
    command = command_of(words)
    code = _main(words, command)
    if argv is None and command in QUICK_EXIT:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Flushes what `dvic` printed, then ends the process at once (no module teardown)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader went away: nothing more to say to it
    os._exit(code)


def parse(argv: list[str], command: str | None) -> tuple[Args, argparse.ArgumentParser | None]:
    """The parsed command line, and the parser when argparse read it (`dvic run`'s usual line is read
    without it: `parse_fast` gives the same result, tests/tui_remote/test_run_args.py)."""
    if command == "run":
        from tui.cmds.run import parse_fast

        fast = parse_fast(argv)
        if fast is not None:
            return fast, None
    parser = build_parser(command)
    return parser.parse_args(argv), parser


def _usage_errors() -> tuple[type[Exception], ...]:
    """What a handler raises for bad usage (exit 2); argparse's own error only if argparse is loaded."""
    loaded = sys.modules.get("argparse")
    return (ConfigError, UsageError) + ((loaded.ArgumentTypeError,) if loaded is not None else ())


def _main(argv: list[str], command: str | None) -> int:
    args, parser = parse(argv, command)
    if args.command is None:
        from tui.cmds.console import run_console

        args.handler = run_console
    warn_token_in_argv(args)

    def settings(need_token: bool = True) -> Settings:
        return resolve(args.server, args.token, args.ca, need_token=need_token,
                       token_file=getattr(args, "token_file", None))

    # Subcommands registered by other packages receive the same helper.
    args.resolve_settings = settings
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        (parser or build_parser()).print_help()
        return 2
    return run_handler(lambda: handler(args, settings) if getattr(args, "handler", None) else handler(args))


def run_handler(call: Callable[[], ExitCode | Awaitable[ExitCode]]) -> int:
    """Runs a command's handler (awaiting it when it is a coroutine) and turns what it raises into
    `dvic`'s exit codes (docs/cli.md): 2 usage, 3 server unreachable or not the pinned one, 1 refused
    by the server, 130 interrupted."""
    try:
        result = call()
        if isinstance(result, Awaitable):  # most handlers are coroutines; `dvic run` is not (no asyncio)
            import asyncio

            result = asyncio.run(_awaited(result))
        return int(result or 0)
    except _usage_errors() as exc:
        print(f"dvic: {exc}", file=sys.stderr)
        return 2
    except PinError as exc:
        print(f"dvic: {exc}", file=sys.stderr)
        return 3
    except Unreachable as exc:
        print(f"dvic: {exc.message}", file=sys.stderr)
        return 3
    except ApiError as exc:
        hint = ""
        if exc.code == "token_expired":
            hint = " (ask an admin for a new token, then run `dvic login URL` with it)"
        elif exc.status == 401:
            hint = " (run `dvic login URL` or check --token-file / DVIC_TOKEN)"
        elif exc.status == 403 and exc.code in ("pending", "pending_approval"):
            hint = " (your account waits for an administrator's approval)"
        print(f"dvic: {exc.message or exc.code} [{exc.code}, HTTP {exc.status}]{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `dvic logs | head`: the reader went away; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _awaited(result: Awaitable[ExitCode]) -> ExitCode:
    return await result


if __name__ == "__main__":
    sys.exit(main())
