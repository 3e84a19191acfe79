"""Running the install script on the target over an SSH connection, as root (directly or via sudo -S)."""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass, field

import asyncssh

from .errors import InstallerError
from .secret import Password

# What to do for each failure code the script or sudo can report.
HINTS: dict[str, str] = {
    "no_python": "install Python 3 on the target (e.g. apt install python3), or pass --python /path/to/python3",
    "old_python": "install Python 3.8 or newer on the target and pass it with --python",
    "no_systemd": "use --no-systemd to start the daemon with nohup instead (it is then not restarted at boot)",
    "unsupported_os": "the node daemon runs on Linux only",
    "not_root": "log in as root or as a user allowed to use sudo",
    "no_sudo": "install sudo on the target or log in as root",
    "sudo_auth_failed": "the password was accepted by SSH but refused by sudo; check the user's sudo setup",
    "not_sudoer": "add the user to the sudo group on the target (usermod -aG sudo USER) or log in as root",
    "sudo_tty": "allow sudo without a terminal for this user (remove 'Defaults requiretty')",
    "bad_daemon": "the daemon file does not parse with the target's Python: use a newer Python (--python)",
    "bad_unit": "the unit template in node_script/dvic-node.service is invalid: fix it and run again",
    # The script's rollback may have deleted STATE_DIR/daemon.out: its last lines are in the message.
    "start_failed": "the daemon's last lines are in the message (with systemd, journalctl -u dvic-node on the "
    "target keeps the rest); nothing is left installed",
    "install_failed": "check free disk space and permissions on the target; the install was rolled back",
    "bundle_changed": "the target's identity changed during the run; run the command again",
    "wrong_node": "this machine belongs to another node: check the address, or remove that node instead",
    "no_shell_user": "create that user on the target first (adduser NAME), or pick another --shell-user",
    "bad_demos": "check the --demo/--demo-cmd values; nothing was changed",
    "script_failed": "run again; if it persists, run the check by hand with sh -x",
}


@dataclass
class ScriptResult:
    facts: dict[str, str] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""


def parse_output(stdout: str) -> tuple[dict[str, str], tuple[str, str] | None]:
    """Read ``DVIC key value`` facts and a ``DVIC-ERROR code message`` line from the script output."""
    facts: dict[str, str] = {}
    error: tuple[str, str] | None = None
    # "\n" only: splitlines() would also split on "\r", "\x1c", "\u2028"... that text from the target may hold.
    for line in stdout.split("\n"):
        line = line.rstrip("\r")
        if line.startswith("DVIC-ERROR "):
            code, _, message = line[len("DVIC-ERROR "):].partition(" ")
            error = (code, message)
        elif line.startswith("DVIC "):
            key, _, value = line[len("DVIC "):].partition(" ")
            facts[key] = value
    return facts, error


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data or ""


def _sudo_error(stderr: str) -> tuple[str, str] | None:
    low = stderr.lower()
    if "incorrect password" in low or "sorry, try again" in low or "no password was provided" in low:
        return "sudo_auth_failed", "sudo refused the password"
    if "not in the sudoers file" in low or "is not allowed to" in low or "may not run sudo" in low:
        return "not_sudoer", "the user may not use sudo on the target"
    if "terminal is required" in low or "must have a tty" in low:
        return "sudo_tty", "sudo on the target requires a terminal"
    return None


async def run_script(
    conn: asyncssh.SSHClientConnection,
    script: str,
    mode: str,
    *,
    password: Password,
    step: str,
    time_limit: float = 120.0,
) -> ScriptResult:
    """Upload ``script`` to a private temp dir, run it as root in ``mode``, return its facts.

    The password only ever travels on sudo's stdin (``sudo -S``), never on a command line. The
    script file is private to the login user (0600 in a 0700 dir) and deleted after the run.
    """
    upload = (
        # A run cut off between upload and run leaves its dir behind: clear this user's old ones.
        'find "${TMPDIR:-/tmp}" -maxdepth 1 -name "dvic-install.*" -user "$(id -u)" -mmin +60 '
        '-exec rm -rf {} + 2>/dev/null; '
        'umask 077 && d=$(mktemp -d "${TMPDIR:-/tmp}/dvic-install.XXXXXX") && cat >"$d/install.sh" '
        '&& printf "%s %s\\n" "$(id -u)" "$d"'
    )
    try:
        up = await asyncio.wait_for(conn.run("/bin/sh -c " + shlex.quote(upload), input=script), time_limit)
        out = str(up.stdout or "").split()
        if up.exit_status != 0 or len(out) != 2:
            raise InstallerError(
                step, "upload_failed",
                f"cannot write the install script to a temp dir on the target: {str(up.stderr or '').strip()}",
                "check that /tmp (or $TMPDIR) on the target is writable and not full",
            )
        uid, tmpdir = out
        quoted = shlex.quote(tmpdir + "/install.sh")
        stdin: bytes | None = None
        if uid == "0":
            runner = f"/bin/sh {quoted} {mode}"  # root: no sudo, and the password is not sent again
        else:
            # -k: always ask (so the line we send is consumed by sudo), -p '': no prompt text.
            runner = (
                f"if command -v sudo >/dev/null 2>&1; then sudo -k -S -p '' -- /bin/sh {quoted} {mode}; "
                "else echo 'DVIC-ERROR no_sudo the user is not root and sudo is not installed'; exit 3; fi"
            )
            stdin = password.line()
        command = f"{runner}; rc=$?; rm -rf {shlex.quote(tmpdir)}; exit $rc"
        try:
            remote = "/bin/sh -c " + shlex.quote(command)
            if stdin is not None:
                run = conn.run(remote, encoding=None, input=stdin)
            else:  # an empty input sends no EOF: give root's command an explicitly empty stdin
                run = conn.run(remote, encoding=None, stdin=asyncssh.DEVNULL)
            proc = await asyncio.wait_for(run, time_limit)
        finally:
            del stdin
    except TimeoutError as exc:
        raise InstallerError(
            step, "timeout", f"the install script did not finish within {time_limit:.0f} s",
            "check the target's load and disk; run the command again (it repairs in place)",
        ) from exc
    except (asyncssh.Error, OSError) as exc:
        raise InstallerError(
            step, "connection_lost", f"the SSH session to the target broke: {exc}",
            "run the command again: a half-done install is rolled back on the target",
        ) from exc

    stdout, stderr = (_text(proc.stdout), _text(proc.stderr))
    facts, error = parse_output(stdout)
    if error is None and proc.exit_status != 0:
        error = _sudo_error(stderr) or (
            "script_failed",
            f"the install script exited with status {proc.exit_status}: {stderr.strip()[-400:]}",
        )
    if error is not None:
        code, message = error
        raise InstallerError(step, code, message, HINTS.get(code, ""))
    return ScriptResult(facts=facts, stdout=stdout, stderr=stderr)
