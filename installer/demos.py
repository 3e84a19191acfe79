"""Demo actions and the shell user for a node: parsing ``--demo``/``--demo-cmd``/``--shell-user`` and rendering demos.json.

The daemon reads STATE_DIR/demos.json for start_demo/stop_demo/restart_demo (docs/node-daemon.md,
"Tracked actions"): an entry holds a systemd ``unit``, or shell commands per verb. The daemon has
no stop-by-signal of its own, so a ``--demo-cmd`` entry gets generated start/stop commands: start
runs the command in its own session (setsid) and records its process group; stop signals that
group (TERM, then KILL after 10 s). ``restart`` is left out: the daemon then runs stop, then start.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

# Demo names become file names (the pid file) and appear in the console: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
# systemd unit names: a name, optionally an instance, and a unit type suffix.
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(service|target|socket|timer|path|scope|slice|mount)$")
# POSIX portable user names (what useradd accepts by default), so no quoting is needed anywhere.
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
MAX_COMMAND = 4000
STOP_GRACE_S = 10


class DemoError(ValueError):
    """A ``--demo``/``--demo-cmd``/``--shell-user`` value that cannot be used (message says which and why)."""


@dataclass(frozen=True)
class Demo:
    """One demo the node can start/stop/restart: through a systemd ``unit`` or a start ``command``."""

    name: str
    unit: str = ""
    command: str = ""


def check_shell_user(user: str) -> str:
    """The user remote shells run as (``--shell-user``); "" keeps the daemon's default."""
    if user and not _USER.match(user):
        raise DemoError(f"--shell-user {user!r}: expected a user name of lower-case letters, digits, _ and -")
    return user


def _split(option: str, value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest.strip():
        raise DemoError(f"{option} {value!r}: expected NAME=" + ("UNIT" if option == "--demo" else "COMMAND"))
    if not _NAME.match(name):
        raise DemoError(f"{option} {value!r}: the name {name!r} must be 1-64 letters, digits or _ . @ + - "
                        "(starting with a letter or digit)")
    return name, rest


def parse_demo(value: str) -> Demo:
    """``NAME=UNIT`` (``--demo``); a unit without a type suffix is taken as a ``.service``."""
    name, unit = _split("--demo", value)
    if "." not in unit:
        unit += ".service"
    if not _UNIT.match(unit):
        raise DemoError(f"--demo {value!r}: {unit!r} is not a systemd unit name (e.g. robot-arm.service)")
    return Demo(name=name, unit=unit)


def parse_demo_cmd(value: str) -> Demo:
    """``NAME=COMMAND`` (``--demo-cmd``): a shell command that runs the demo in the foreground."""
    name, command = _split("--demo-cmd", value)
    if "\0" in command or "\n" in command or "\r" in command:
        raise DemoError(f"--demo-cmd {name}: the command must be one line")
    if len(command) > MAX_COMMAND:
        raise DemoError(f"--demo-cmd {name}: the command is longer than {MAX_COMMAND} characters")
    return Demo(name=name, command=command.strip())


def check_demos(demos: list[Demo]) -> list[Demo]:
    """Validate a whole list (each entry as parse_* would, and no name twice)."""
    seen: set[str] = set()
    for demo in demos:
        if not _NAME.match(demo.name):
            raise DemoError(f"demo name {demo.name!r}: 1-64 letters, digits or _ . @ + -")
        if bool(demo.unit) == bool(demo.command):
            raise DemoError(f"demo {demo.name!r}: give either a unit or a command")
        if demo.unit:
            parse_demo(f"{demo.name}={demo.unit}")
        else:
            parse_demo_cmd(f"{demo.name}={demo.command}")
        if demo.name in seen:
            raise DemoError(f"demo {demo.name!r} is given twice")
        seen.add(demo.name)
    return demos


# The commands run under /bin/sh, often dash: its kill reads "-TERM -- -PGID" as a bad number,
# so signals are always given as "kill -s SIG -- -PGID" (POSIX, and dash, bash and busybox accept it).
def _start_script(demo: Demo, pidfile: str, outfile: str) -> str:
    q = shlex.quote
    # Already running: say so and succeed, so a start is safe to repeat. The pid file holds the
    # process group and the boot id: after a reboot the old number means nothing.
    return (
        f"pidf={q(pidfile)}; boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null); "
        f'if [ -f "$pidf" ]; then read -r pid b <"$pidf"; '
        f'if [ "$b" = "$boot" ] && [ -n "$pid" ] && kill -s 0 -- "-$pid" 2>/dev/null; then '
        f'echo "{demo.name} is already running (process group $pid)"; exit 0; fi; fi; '
        f"command -v setsid >/dev/null 2>&1 || {{ echo 'setsid (util-linux) is not installed'; exit 127; }}; "
        f'mkdir -p "$(dirname "$pidf")" || exit 1; '
        # Output goes to a file, not to the daemon: the action would otherwise wait for it to close.
        f"setsid /bin/sh -c {q(demo.command)} </dev/null >{q(outfile)} 2>&1 & "
        f'pid=$!; echo "$pid $boot" >"$pidf"; '
        # The child becomes its own group only once setsid has run: wait for that (bounded), so a
        # stop right after this start finds the group. A child that ended already cannot get there.
        f'i=0; while kill -s 0 "$pid" 2>/dev/null && ! kill -s 0 -- "-$pid" 2>/dev/null && [ "$i" -lt 50 ]; '
        f'do sleep 0.1; i=$((i + 1)); done; '
        # Half a second of grace: a demo that fails on start (bad path, missing file) is reported.
        f'sleep 0.5; '
        f'if kill -s 0 -- "-$pid" 2>/dev/null; then echo "{demo.name} started (process group $pid)"; exit 0; fi; '
        f'wait "$pid"; rc=$?; rm -f "$pidf"; '
        f'echo "{demo.name} exited at once with status $rc: $(tail -c 2000 {q(outfile)} 2>/dev/null)"; '
        f'[ "$rc" = 0 ]'
    )


def _stop_script(demo: Demo, pidfile: str) -> str:
    q = shlex.quote
    ticks = STOP_GRACE_S * 10
    return (
        f"pidf={q(pidfile)}; boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null); "
        f'pid=""; if [ -f "$pidf" ]; then read -r pid b <"$pidf"; [ "$b" = "$boot" ] || pid=""; fi; '
        f'case "$pid" in ""|*[!0-9]*) rm -f "$pidf"; echo "{demo.name} is not running"; exit 0 ;; esac; '
        f'if ! kill -s TERM -- "-$pid" 2>/dev/null; then rm -f "$pidf"; echo "{demo.name} is not running"; exit 0; fi; '
        f'i=0; while kill -s 0 -- "-$pid" 2>/dev/null && [ "$i" -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done; '
        f'if kill -s 0 -- "-$pid" 2>/dev/null; then kill -s KILL -- "-$pid" 2>/dev/null; '
        f'echo "{demo.name} did not stop within {STOP_GRACE_S} s: killed"; else echo "{demo.name} stopped"; fi; '
        f'rm -f "$pidf"'
    )


def demos_json(demos: list[Demo], state_dir: str) -> dict[str, Any]:
    """The content of STATE_DIR/demos.json for these demos (format of docs/node-daemon.md)."""
    out: dict[str, Any] = {}
    for demo in check_demos(demos):
        if demo.unit:
            out[demo.name] = {"unit": demo.unit}
        else:
            base = f"{state_dir.rstrip('/')}/demos/{demo.name}"
            out[demo.name] = {"start": _start_script(demo, base + ".pid", base + ".out"),
                              "stop": _stop_script(demo, base + ".pid")}
    return out
