"""Command line: `run` logs any program's output; `cat` and `ls` read demo logs by hand."""

import argparse
import os
import signal
import sys
from typing import List, Optional, Tuple

from ._config import ConfigError, resolve_dir
from ._format import LEVELS
from ._run import Runner
from ._show import cat, ls, resolve

EXIT_USAGE = 2

_DESCRIPTION = """\
Run CMD with its stdout and stderr logged, line by line, to a dvic_log file in $DVIC_LOG_DIR
(default /tmp) that the DVIC node daemon ships. stdout lines are logged at INFO and stderr
lines at ERROR (change with --stdout-level/--stderr-level); both are also echoed unless
--quiet. The exit status of CMD is passed through (a CMD killed by a signal kills the wrapper
with the same signal); SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m dvic_log", description="DVIC demo logging tools.")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="run a program and log its output",
        description=_DESCRIPTION,
        usage="python3 -m dvic_log run [options] -- CMD [ARGS...]",
    )
    run.add_argument("--name", help="demo name shown to operators (default: the basename of CMD)")
    run.add_argument("--dir", dest="directory", help="log directory (default: $DVIC_LOG_DIR or /tmp)")
    run.add_argument(
        "--max-bytes", type=int, help="size cap of one log file (default: $DVIC_LOG_MAX_BYTES or 8 MiB)"
    )
    run.add_argument(
        "--stdout-level", default="INFO", choices=LEVELS, help="level of stdout lines (default INFO)"
    )
    run.add_argument(
        "--stderr-level", default="ERROR", choices=LEVELS, help="level of stderr lines (default ERROR)"
    )
    run.add_argument(
        "--pty",
        action="store_true",
        help="give CMD a pseudo-terminal as stdout, so C programs flush every line",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="do not echo CMD's output")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    cat = sub.add_parser(
        "cat",
        help="print demo logs readably",
        description="Print dvic_log files as readable text (time, level, [logger], message, traceback).",
    )
    cat.add_argument("targets", nargs="+", metavar="FILE|TOKEN|NAME", help="a file, a token, or a demo name")
    cat.add_argument("-f", "--follow", action="store_true", help="keep printing new lines, across rotations")
    cat.add_argument("-a", "--all", action="store_true", help="start with the previous (.1) file")
    cat.add_argument(
        "--dir", dest="directory", help="where to look up tokens and names (default: $DVIC_LOG_DIR)"
    )

    ls = sub.add_parser("ls", help="list the demo logs of this machine", description="List dvic_log files.")
    ls.add_argument("--dir", dest="directory", help="log directory (default: $DVIC_LOG_DIR or /tmp)")
    ls.add_argument("--json", action="store_true", help="print one JSON array (for scripts)")
    return parser


def _split_command(args: List[str]) -> Tuple[List[str], Optional[List[str]]]:
    """Split at the first "--": argparse's handling of "--" with REMAINDER differs across versions."""
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1 :]
    return args, None


def _die_like(signum: int) -> int:
    """Terminate this process with the signal that killed the child, so our parent sees the same."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the child may have dumped core; we must not
    except (ImportError, ValueError, OSError):
        pass
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP cannot be handled, so they are already at their default
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    return 128 + signum  # only reached for a signal whose default action does not terminate


def _run(parser: argparse.ArgumentParser, ns: argparse.Namespace, command: Optional[List[str]]) -> int:
    if command is None:
        command = ns.cmd
    elif ns.cmd:
        parser.error("unexpected arguments before --: %s" % " ".join(ns.cmd))
    if not command:
        parser.error("no command given: python3 -m dvic_log run [options] -- CMD [ARGS...]")
    name = ns.name if ns.name is not None else os.path.basename(command[0])
    try:
        runner = Runner(
            command,
            name,
            directory=ns.directory,
            max_bytes=ns.max_bytes,
            stdout_level=ns.stdout_level,
            stderr_level=ns.stderr_level,
            echo=not ns.quiet,
            use_pty=ns.pty,
        )
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    returncode = runner.run()
    if returncode < 0:
        return _die_like(-returncode)
    return returncode


def _reader_closed() -> int:
    """Our stdout reader went away (`| head`): stop quietly, like cat(1)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
    os.close(devnull)
    return 0


def _cat(ns: argparse.Namespace) -> int:
    try:
        directory = resolve_dir(ns.directory)
        paths = [resolve(target, directory) for target in ns.targets]
        return cat(paths, follow=ns.follow, include_previous=ns.all)
    except BrokenPipeError:
        return _reader_closed()
    except (ConfigError, OSError) as exc:
        print("dvic_log cat: %s" % exc, file=sys.stderr)
        return 1


def _ls(ns: argparse.Namespace) -> int:
    try:
        return ls(resolve_dir(ns.directory), as_json=ns.json)
    except BrokenPipeError:
        return _reader_closed()
    except ConfigError as exc:
        print("dvic_log ls: %s" % exc, file=sys.stderr)
        return 1


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(args)
    parser = _parser()
    ns = parser.parse_args(options)
    if ns.command_name == "run":
        return _run(parser, ns, command)
    if command:  # `cat -- FILE`: after "--" come only targets
        ns = parser.parse_args(options + ["--"] + command)
    if ns.command_name == "cat":
        return _cat(ns)
    return _ls(ns)


if __name__ == "__main__":
    sys.exit(main())
