"""Pure pieces of the client side: literal text, formatting, settings precedence, time options."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
from rich.console import Console

from tui import fmt
from tui.api.config import ConfigError, Store, config_dir, resolve
from tui.cmds.common import parse_level, parse_time, terminal_columns
from tui.textsafe import clean, literal

HOSTILE = ["[link=http://x]x[/link]", "[/b]", "\x1b]52;c;aGk=\x07", "\x1b[31mred\x1b[0m", "a\x9b2Jb",
           "bell\x07", "rtl\u202eevil", "nul\x00", "osc8 \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"]


@pytest.mark.parametrize("text", HOSTILE)
def test_clean_leaves_no_control_characters(text: str) -> None:
    out = clean(text)
    assert not any(ord(c) < 32 and c not in "\n" for c in out)
    assert not any(0x7F <= ord(c) <= 0x9F for c in out)
    assert "\u202e" not in out


def test_clean_keeps_visible_text_and_marks_controls() -> None:
    assert clean("\x1b[31mred\x1b[0m") == "red"
    assert clean("\x1b]52;c;aGk=\x07after") == "after"
    assert clean("bell\x07") == "bell\u2407"
    assert clean("a\nb", single_line=True) == "a\u23ce b"
    assert clean("a\r\nb") == "a\nb"


def test_literal_is_never_markup() -> None:
    console = Console(width=80, record=True, color_system=None)
    for text in ("[link=http://x]x[/link]", "[/b]", "[bold red]loud[/]"):
        console.print(literal(text))
    out = console.export_text()
    assert "[link=http://x]x[/link]" in out and "[/b]" in out and "[bold red]loud[/]" in out
    assert not literal("[link=http://x]x[/link]").spans


def test_ages_and_sizes() -> None:
    assert fmt.age(100.0, now=103.4) == "3s"
    assert fmt.age(0.0, now=300) == "5m"
    assert fmt.age(0.0, now=7300) == "2h"
    assert fmt.age(0.0, now=86400 * 3) == "3d"
    assert fmt.age(None) == "-"
    assert fmt.age(200.0, now=100.0) == "0s"  # clock skew never shows negative ages
    assert fmt.duration(90061) == "1d 1h"
    assert fmt.size(4 * 1024**3) == "4.0G"
    assert fmt.sparkline([0, 50, 100]) == "▁▅█"


def test_table_is_aligned_and_clean() -> None:
    out = fmt.table(["A", "NUM"], [["x\x1b[2Jy", 5], ["long-name", 12]], right=(1,))
    assert out.splitlines() == ["A          NUM", "xy           5", "long-name   12"]


def test_time_and_level_options() -> None:
    assert parse_time("10m", now=1000.0) == 400.0
    assert parse_time("1764000000") == 1764000000.0
    assert parse_time("2h", now=10000.0) == 2800.0
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read time"):
        parse_time("soon")
    assert parse_level("warn") == "WARNING"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown level"):
        parse_level("loud")


def test_terminal_columns_without_a_terminal_or_a_stdout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COLUMNS", "132")
    assert terminal_columns() == 132
    monkeypatch.delenv("COLUMNS")
    with open(tmp_path / "out", "w") as not_a_tty:
        monkeypatch.setattr("sys.__stdout__", not_a_tty)
        assert terminal_columns() == 80
    monkeypatch.setattr("sys.__stdout__", None)  # started without one (pythonw, a service)
    assert terminal_columns() == 80


def test_settings_precedence(tmp_path: Path) -> None:
    store = Store(tmp_path / "dvic")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    store.save("https://stored:8443", "PEM", "ab" * 32, "stored-token")
    assert stat.S_IMODE(os.stat(store.dir / "token").st_mode) == 0o600
    s = resolve(env={}, store=store)
    assert (s.server, s.token, s.ca) == ("https://stored:8443", "stored-token", str(store.ca_path))
    s = resolve(env={"DVIC_SERVER": "https://env/", "DVIC_TOKEN": "env-token", "DVIC_CA": str(ca)}, store=store)
    assert (s.server, s.token, s.ca) == ("https://env", "env-token", str(ca))
    s = resolve("https://opt", "opt-token", str(ca), env={"DVIC_TOKEN": "env-token"}, store=store)
    assert (s.server, s.token) == ("https://opt", "opt-token")


def test_settings_from_the_default_directory(tmp_path: Path) -> None:
    """Without a Store, resolve() reads the directory `dvic login` writes (with os.path, not pathlib)."""
    for env, where in (({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg" / "dvic"),
                       ({"HOME": str(tmp_path / "home")}, tmp_path / "home" / ".config" / "dvic")):
        assert config_dir(env) == where
        with pytest.raises(ConfigError, match="dvic login"):
            resolve(env=env)
        Store(config_dir(env)).save("https://stored:8443", "PEM", "ab" * 32, f"token-{where.parent.name}")
        s = resolve(env=env)
        assert (s.server, s.token, s.ca) == ("https://stored:8443", f"token-{where.parent.name}", str(where / "ca.pem"))
        assert s == resolve(env=env, store=Store(config_dir(env)))
    (tmp_path / "xdg" / "dvic" / "config.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        resolve(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})


def test_settings_errors_say_what_to_do(tmp_path: Path) -> None:
    empty = Store(tmp_path / "none")
    with pytest.raises(ConfigError, match="dvic login"):
        resolve(env={}, store=empty)
    with pytest.raises(ConfigError, match="https://"):
        resolve("ftp://x", "t", env={}, store=empty)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("https://x", "t", str(tmp_path / "missing.pem"), env={}, store=empty)
    broken = Store(tmp_path / "broken")
    broken.dir.mkdir()
    (broken.dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        resolve(env={}, store=broken)


def test_token_files_and_plain_http(tmp_path: Path) -> None:
    empty = Store(tmp_path / "none")
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\n")
    s = resolve("https://x", None, str(token_file), env={}, store=empty, token_file=str(token_file))
    assert s.token == "file-token"
    # The option first, then DVIC_TOKEN, then DVIC_TOKEN_FILE, then the stored login.
    env = {"DVIC_TOKEN": "env-token", "DVIC_TOKEN_FILE": str(token_file)}
    assert resolve("https://x", None, str(token_file), env=env, store=empty).token == "env-token"
    env = {"DVIC_TOKEN_FILE": str(token_file)}
    assert resolve("https://x", None, str(token_file), env=env, store=empty).token == "file-token"
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve("https://x", None, str(token_file), env={}, store=empty, token_file=str(tmp_path / "blank"))
    with pytest.raises(ConfigError, match="DVIC_TOKEN_FILE"):
        resolve("https://x", None, str(token_file), env={"DVIC_TOKEN_FILE": str(tmp_path / "nope")}, store=empty)
    for url in ("http://127.0.0.1:8443", "http://127.9.9.9:1", "http://[::1]:8443", "http://localhost:8443"):
        assert resolve(url, "t", env={}, store=empty).server == url
    for url in ("http://10.0.0.5:8443", "http://monitor.lab", "http://[::ffff:10.0.0.5]:1", "http://127.0.0.1.evil"):
        with pytest.raises(ConfigError, match="refusing plain http://"):
            resolve(url, "t", env={}, store=empty)


def test_fleet_model_tolerates_odd_summaries_and_counts() -> None:
    from tui.console.fleet import Filter, Fleet, cycle

    fleet = Fleet()
    changed = fleet.update([
        {"id": "a", "name": "pi-1", "state": "online", "group": "g1", "metrics": [1, 2], "demos": None},
        {"name": "no-id"},
        "not a dict",  # type: ignore[list-item]
        {"id": "b", "name": "pi-2", "state": "failed", "group": "", "metrics": {"cpu": 5, "temp": 90.0}},
    ])
    assert [n["id"] for n in changed] == ["a", "b"]
    assert fleet.nodes["a"]["metrics"] == {} and fleet.nodes["a"]["demos"] == {}
    counts = fleet.counts()
    assert counts["online"] == 1 and counts["failed"] == 1 and counts["alerts"] == 1
    assert fleet.groups() == ["", "g1"]
    assert Filter(text="PI-2").matches(fleet.nodes["b"]) and not Filter(group="g1").matches(fleet.nodes["b"])
    assert cycle(["x", "y"], None) == "x" and cycle(["x", "y"], "y") is None and cycle(["x"], "gone") is None
    fleet.update([{"id": "c", "name": "pi-3", "state": "online", "metrics": {"disk": 95.0}}])
    assert fleet.counts()["alerts"] == 2
    nodes, gone = fleet.replace([{"id": "b", "name": "pi-2", "state": "online"}])
    assert gone == ["a", "c"] and list(fleet.nodes) == ["b"]
    assert fleet.trend("b", "cpu") == [5.0]
    assert fleet.counts()["alerts"] == 0  # b recovered, c is gone


def test_seen_ticks_only_for_late_nodes() -> None:
    from tui.console.screens.fleet import _seen

    now = 1_000_000.0
    assert _seen({"last_seen": now - 4.2}, now) == "<10s"  # on time: the same text every second
    assert _seen({"last_seen": now - 12.5}, now) == "12s"
    assert _seen({"last_seen": now - 600}, now) == "10m"
    assert _seen({"last_seen": None}, now) == "-" and _seen({}, now) == "-"


def test_jump_host_parsing() -> None:
    from tui.console.screens.add_node import parse_jump

    assert parse_jump("ops@gw") == ("ops", "gw", 22)
    assert parse_jump("ops@gw:2222") == ("ops", "gw", 2222)
    assert parse_jump("[fd00::1]:2200") == ("", "fd00::1", 2200)
    with pytest.raises(ValueError, match="USER@HOST"):
        parse_jump("ops@")
    with pytest.raises(ValueError, match="port must be a number"):
        parse_jump("ops@gw:ssh")


def test_node_updates_are_taken_oldest_first_in_shares() -> None:
    from tui.console.live import LiveFeed

    feed = LiveFeed(None, lambda message: None)  # type: ignore[arg-type]
    for i in range(5):
        feed.pending[f"n{i}"] = {"id": f"n{i}", "v": 1}
    feed.pending["n1"] = {"id": "n1", "v": 2}  # a newer summary keeps the node's place in line
    assert [n["id"] for n in feed.take_nodes(2)] == ["n0", "n1"]
    assert list(feed.pending) == ["n2", "n3", "n4"]
    assert [n["id"] for n in feed.take_nodes()] == ["n2", "n3", "n4"] and not feed.pending


def test_alert_book_keeps_the_furthest_state_and_the_view_order() -> None:
    from tui.console.alerts import AlertBook, order_key

    book = AlertBook()
    firing = {"id": 1, "rule": "disk_full", "node": "pi", "severity": "warning", "state": "firing", "started": 10.0}
    acked = {**firing, "state": "acknowledged", "acked_by": "ann"}
    assert book.apply(acked) and not book.apply(firing)  # a frame older than the read changes nothing
    assert book.alerts[1]["acked_by"] == "ann"
    now = 10_000.0
    book.replace([acked, {**firing, "id": 2, "severity": "critical", "started": 5.0},
                  {**firing, "id": 3, "silenced": True},
                  {**firing, "id": 4, "state": "resolved", "resolved": now - 60},
                  {**firing, "id": 5, "state": "resolved", "resolved": now - 7200}], now=now)
    assert [a["id"] for a in book.ordered()] == [2, 3, 1, 4]  # firing, silenced, acknowledged, recent resolved
    assert order_key(book.alerts[2]) < order_key(book.alerts[3])
    assert AlertBook(node="other").apply(firing) is False


def test_alert_table_columns_fit_80_and_grow_with_room() -> None:
    from tui.console.widgets.alert_table import FIXED_WIDTH, column_widths

    assert FIXED_WIDTH <= 80 and column_widths(80) == {"summary": 0}
    wide = column_widths(120)
    assert wide["rule"] == 18 and wide["subject"] == 20 and wide["summary"] >= 10
