"""`dvic release` and `dvic release publish`: the daemon release nodes update to (docs/protocol.md 4.4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui import fmt
from tui.cmds.common import SettingsFn, UsageError, client, emit_json, say
from tui.textsafe import clean


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("release", parents=[parent], help="the daemon release (or publish one)")
    p.add_argument("--json", action="store_true", help="print the release document")
    rsub = p.add_subparsers(dest="release_command", metavar="publish")
    pub = rsub.add_parser("publish", parents=[parent], help="publish a newer daemon file (admin)")
    pub.add_argument("file", type=Path, help="the daemon file (its DAEMON_VERSION must be newer)")
    pub.add_argument("--json", action="store_true", help="print the server's answer")
    p.set_defaults(handler=release)


async def release(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        if getattr(args, "release_command", None) == "publish":
            try:
                data = args.file.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
            doc = await api.publish_release(data)
            if args.json:
                emit_json(doc)
            else:
                say(f"published daemon {doc.get('version')} ({fmt.size(doc.get('size'))}, sha256 {doc.get('sha256')})")
            return 0
        doc = await api.release()
    if args.json:
        emit_json(doc)
        return 0
    key = doc.get("release_key") or {}
    modulus = str(key.get("n", "")) if isinstance(key, dict) else ""
    rows = [("version", doc.get("version") or "none published"), ("sha256", doc.get("sha256") or "-"),
            ("size", fmt.size(doc.get("size"))),
            ("release key", f"RSA {len(modulus) * 4} bits, e={key.get('e')}, n={modulus[:16]}…" if modulus else "-"),
            ("endorsements", str(len(doc.get("endorsements") or [])))]
    say("\n".join(f"{k.ljust(12)}  {clean(v, single_line=True)}" for k, v in rows))
    return 0
