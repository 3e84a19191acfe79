"""`dvic run`'s command line read without argparse (tui/cmds/run.py `parse_fast`) gives what argparse
gives, on every line it takes; every other line is left to argparse. Also the small stdlib stand-ins
of the run path (URL split, path quoting, websocket accept) against the stdlib functions they replace."""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import itertools
from urllib.parse import quote, urlsplit

import pytest

from tui.api.core import seg, split_url
from tui.api.sync import WS_GUID, websocket_accept
from tui.cli import build_parser, command_of
from tui.cmds.common import UsageError
from tui.cmds.run import _run_options_between, parse_fast, split_run_words

CONNECTION = [
    [], ["--server", "https://a:1"], ["--server=https://a:1"], ["--token", "t", "--ca", "c.pem"],
    ["--server", "x", "--server", "y"], ["--ca="], ["--server", "run"], ["--token", ""],
]
RUN_OPTIONS = [
    [], ["--timeout", "5"], ["--timeout=2.5"], ["--timeout", "nan"], ["--timeout", "1e3"], ["--timeout", " 7 "],
    ["--timeout", "1_000"], ["--shell"], ["--json", "--yes"], ["-y"], ["--all"], ["--group", "lab"], ["--group="],
    ["--group", ""], ["--server", "z", "--token", "u"], ["--ca=x.pem"], ["--timeout", "5", "--timeout", "6"],
    ["--yes", "--shell", "--json", "--all", "--group", "g", "-y"],
]
WORDS = [
    ["n", "--", "true"], ["n1,n2", "--", "sh", "-c", "echo $X"], ["n", "true"], ["n", "--timeout", "3", "--", "x"],
    ["", "--", "x"], ["n", "--", "--", "x"], ["run", "--", "-h"], ["n", "-h"], ["n", "b", "--json", "--", "x", "--"],
    ["n"], ["n", "--group", "--", "x"], ["n", "--bogus", "--", "x"], ["n", "--", ""], ["-n"], ["--", "x"],
    ["--", "n", "x"], ["--"], ["--", "--", "x"], ["--", "-h"],
]
# Lines parse_fast must leave to argparse: help, errors, abbreviations, combined flags, values
# starting with "-" (argparse takes "-5" as a value but "-x" as an option), nothing after `run`.
LEFT_TO_ARGPARSE = [
    ["run"], ["run", "--help"], ["run", "-h", "n", "--", "x"], ["--help", "run"], ["--version"],
    ["run", "--timeout", "soon", "n", "--", "x"], ["run", "--timeout", "-5", "n", "--", "x"],
    ["run", "--timeout="], ["run", "--time", "5", "n", "--", "x"], ["run", "-yy", "n", "--", "x"],
    ["run", "--all=1", "--", "x"], ["--server"], ["--server", "-x", "run", "n"],
    ["run", "--group"], ["run", "--group", "-g", "n"], ["run", "-", "x"], ["run", "--s", "x"],
    ["--serv", "x", "run", "n", "--", "x"], ["run", "--unknown", "n"], ["--token", "t", "run"],
    ["run", "--timeout", "5"], ["-x", "run", "n", "--", "x"], ["--", "run", "n", "--", "x"],
    ["run", "-y=1", "n", "--", "x"], ["nodes"], [],
]


def _argparse(argv: list[str]) -> dict[str, object] | None:
    """What argparse makes of `argv` (None when it refuses it)."""
    try:
        return vars(build_parser("run").parse_args(argv))
    except SystemExit:
        return None


def _split_by_argparse(args: object) -> tuple[list[str], list[str]]:
    """split_run_words as it was before the shortcut: argparse reads the words before `--` always."""
    words = list(args.words)  # type: ignore[attr-defined]
    if "--" in words:
        cut = words.index("--")
        pre, command = words[:cut], words[cut + 1:]
    elif args.group is not None or args.all:  # type: ignore[attr-defined]
        pre, command = [], words
    else:
        pre, command = words[:1], words[1:]
    nodes = _run_options_between(args, pre)  # type: ignore[arg-type]
    if not command:
        raise UsageError("no command: dvic run NODE -- CMD [ARGS...]")
    return nodes, command


def _outcome(split, args: object) -> tuple[object, dict[str, object]]:
    args = copy.deepcopy(args)
    try:
        result: object = split(args)
    except UsageError as exc:
        result = ("usage", str(exc))
    except SystemExit as exc:  # argparse's "unrecognized arguments"
        result = ("exit", exc.code)
    return result, vars(args)


def _comparable(values: dict[str, object]) -> dict[str, str]:
    return {k: repr(v) for k, v in values.items()}  # repr: `--timeout nan` is equal to itself


LINES = [[*c, "run", *o, *w] for c, o, w in itertools.product(CONNECTION, RUN_OPTIONS, WORDS)]


@pytest.mark.parametrize("argv", LINES, ids=" ".join)
def test_the_fast_reading_of_a_run_line_is_what_argparse_reads(argv: list[str]):
    assert command_of(argv) == "run"
    fast = parse_fast(argv)
    expected = _argparse(argv)
    if expected is None:
        assert fast is None, f"argparse refuses {argv}"
        return
    assert fast is not None, f"{argv} is read by argparse only"
    assert _comparable(vars(fast)) == _comparable(expected)
    # split_run_words reads plain node words without argparse: same nodes, command and options.
    fast_split, fast_args = _outcome(split_run_words, fast)
    slow_split, slow_args = _outcome(_split_by_argparse, argparse.Namespace(**expected))
    assert fast_split == slow_split and _comparable(fast_args) == _comparable(slow_args)


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_other_lines_are_left_to_argparse(argv: list[str]):
    assert parse_fast(argv) is None


def test_the_usual_lines_take_the_fast_path():
    for argv in (["run", "pi-1", "--", "true"], ["--server", "https://h:8443", "run", "--timeout", "5", "a,b", "--",
                                                 "uname", "-a"], ["run", "--group", "lab", "--yes", "--", "x"]):
        assert parse_fast(argv) is not None, argv


@pytest.mark.parametrize("value", [
    "pi-1", "0b6c3b7e-8d2b-4b7e-9a59-0c1f6f3e2a11", "a b", "a/b", "ü", "日本", "%41", "x?y#z", "~._-", "", "+&=;,",
    "\x00\x7f", "🚀", "a\u0301",
])
def test_path_segments_are_quoted_as_urllib_does(value: str):
    assert seg(value) == quote(value, safe="")


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:8443", "https://h", "http://localhost:8080/base", "https://Dvic.Lab:0443",
    "https://h:", "https://h:99999", "https://h:1:2", "https://u:p@h:1", "https://[::1]:8443", "https://h:1?x=1",
    "https://h#f", "HTTPS://h:1", " https://h:1", "https://h\t:1", "https://", "ftp://h:1", "https:///x",
    "https://ünï.example:1", "https://h:１２", "https://h_h:1", "h:1", "https://h:8443/a:b",
])
def test_server_urls_are_split_as_urlsplit_does(url: str):
    try:
        parts = urlsplit(url)
        expected: object = (parts.scheme, parts.netloc, parts.hostname, parts.port)
    except ValueError as exc:
        expected = ("ValueError", str(exc))
    try:
        got: object = split_url(url)
    except ValueError as exc:
        got = ("ValueError", str(exc))
    assert got == expected


def test_websocket_accept_is_rfc_6455s():
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
    key = base64.b64encode(b"0123456789abcdef").decode()
    assert websocket_accept(key) == base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
