"""Plain-function tests: rendering, the password holder, the known_hosts store, output parsing, CLI args."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import asyncssh
import pytest

from installer import InstallerError, Password
from installer.cli import _source, main, register
from installer.esp32 import c_string, render_header
from installer.hostkeys import KnownHosts, host_pattern
from installer.models import Direct, Jump, ViaNode
from installer.paths import NodeLayout, config_dir
from installer.remote import parse_output
from installer.render import RenderError, _heredoc_function, render_script, render_unit

from .conftest import MINIMAL_UNIT

LAYOUT = NodeLayout("/srv/t")
PATH = "/usr/bin:/bin"


def test_layout_with_and_without_prefix() -> None:
    assert NodeLayout().daemon == "/opt/dvic-node/dvic_node.py"
    assert NodeLayout().bundle == "/etc/dvic-node/bundle.json"
    assert NodeLayout().state_dir == "/var/lib/dvic-node"
    assert NodeLayout().unit == "/etc/systemd/system/dvic-node.service"
    assert LAYOUT.bundle == "/srv/t/etc/dvic-node/bundle.json"


def test_config_dir_is_xdg_aware(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_dir() == tmp_path / "dvic"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert config_dir() == Path.home() / ".config" / "dvic"


def test_render_unit_fills_every_placeholder() -> None:
    unit = render_unit(MINIMAL_UNIT, "/usr/bin/python3", LAYOUT)
    assert "ExecStart=/usr/bin/python3 /srv/t/opt/dvic-node/dvic_node.py --config /srv/t/etc/dvic-node/bundle.json" \
        " --state-dir /srv/t/var/lib/dvic-node" in unit
    assert "@" not in unit


def test_render_unit_refuses_bad_templates_and_paths() -> None:
    with pytest.raises(RenderError, match="lacks @DAEMON@"):
        render_unit("[Service]\nExecStart=@PYTHON@ x --config @BUNDLE@\n", "/usr/bin/python3", LAYOUT)
    with pytest.raises(RenderError, match="unknown placeholders: @USER@"):
        render_unit(MINIMAL_UNIT + "User=@USER@\n", "/usr/bin/python3", LAYOUT)
    with pytest.raises(RenderError, match="python"):
        render_unit(MINIMAL_UNIT, "/usr/bin/python3; rm -rf /", LAYOUT)
    with pytest.raises(RenderError, match="daemon path"):
        render_unit(MINIMAL_UNIT, "/usr/bin/python3", NodeLayout("/srv/with space"))


def test_render_script_checks_its_inputs() -> None:
    with pytest.raises(RenderError, match="mode"):
        render_script("explode", layout=LAYOUT, init="none", target_path=PATH)
    with pytest.raises(RenderError, match="init"):
        render_script("check", layout=LAYOUT, init="upstart", target_path=PATH)
    with pytest.raises(RenderError, match="needs a bundle"):
        render_script("install", layout=LAYOUT, init="none", target_path=PATH, daemon_text="x", unit_text="u")
    with pytest.raises(RenderError, match="target PATH"):
        render_script("check", layout=LAYOUT, init="none", target_path="/usr/bin:$(reboot)")


def test_only_the_install_script_carries_the_bundle() -> None:
    bundle = {"node_id": "n1", "token": "TOKEN-abc"}
    check = render_script("check", layout=LAYOUT, init="none", target_path=PATH)
    assert "TOKEN-abc" not in check
    install = render_script("install", layout=LAYOUT, init="none", target_path=PATH, daemon_text="print(1)\n",
                            unit_text="[Service]\n", bundle=bundle)
    assert "TOKEN-abc" in install
    kept = render_script("install", layout=LAYOUT, init="none", target_path=PATH, daemon_text="print(1)\n",
                         unit_text="[Service]\n", keep_bundle=True, expect_node_id="n1")
    assert "write_bundle() {" not in kept


def test_heredoc_payload_round_trips_byte_exact(tmp_path: Path) -> None:
    nasty = "a $HOME `id` $(id) 'q' \"d\" \\ \\n\nDVIC_PAYLOAD_X\nEOF\n\ttab\n@PAYLOAD@ @BUNDLE@\nno newline at end"
    script = _heredoc_function("write_it", nasty) + f'write_it "{tmp_path}/out"\n'
    subprocess.run(["sh", "-c", script], check=True)
    assert (tmp_path / "out").read_text() == nasty + "\n"


def test_parse_output() -> None:
    facts, error = parse_output("noise\nDVIC python /usr/bin/python3\nDVIC os Debian GNU/Linux 12\nDVIC installed no\n")
    assert facts == {"python": "/usr/bin/python3", "os": "Debian GNU/Linux 12", "installed": "no"}
    assert error is None
    _, error = parse_output("DVIC os x\nDVIC-ERROR no_python python3 was not found in /usr/bin\n")
    assert error == ("no_python", "python3 was not found in /usr/bin")


def test_password_is_wiped_and_never_shown() -> None:
    raw = bytearray(b"s3cret-pw")
    pw = Password(raw)
    assert raw == bytearray(len(raw))  # the caller's copy is zeroed at once
    assert "s3cret" not in repr(pw) and "s3cret" not in str(pw)
    assert pw.text() == "s3cret-pw" and pw.line() == b"s3cret-pw\n"
    inner = pw._buf
    pw.wipe()
    assert inner == bytearray(len(inner)) and pw.wiped
    with pytest.raises(RuntimeError, match="wiped"):
        pw.text()
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Password(b"x"))


def test_password_from_stream() -> None:
    stream = io.BytesIO(b"pw with spaces\r\nrest")
    assert Password.from_stream(stream).text() == "pw with spaces"
    assert stream.read() == b"rest"  # only the line is consumed
    assert Password.from_stream(io.BytesIO(b"no-newline")).text() == "no-newline"
    with pytest.raises(ValueError, match="longer than"):
        Password.from_stream(io.BytesIO(b"x" * 5000))
    with pytest.raises(ValueError, match="no password"):
        Password.from_stream(io.BytesIO(b"\n"))
    with pytest.raises(ValueError, match="newline"):
        Password(b"a\nb")


def test_known_hosts_store(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    store = KnownHosts(tmp_path / "cfg" / "known_hosts")
    assert store.keys_for("10.0.0.5", 22) == []
    store.add("10.0.0.5", 22, key)
    store.add("10.0.0.5", 2222, other)
    assert host_pattern("10.0.0.5", 2222) == "[10.0.0.5]:2222"
    assert [k.public_data for k in store.keys_for("10.0.0.5", 22)] == [key.public_data]
    assert [k.public_data for k in store.keys_for("10.0.0.5", 2222)] == [other.public_data]
    assert store.keys_for("10.0.0.6", 22) == []
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert oct(store.path.parent.stat().st_mode & 0o777) == "0o700"

    store.path.write_text(store.path.read_text() + "10.0.0.7 ssh-ed25519 not-base64!\n")
    with pytest.raises(InstallerError, match="line 3") as err:
        store.keys_for("10.0.0.7", 22)
    assert err.value.code == "known_hosts_corrupt"


def test_c_string_escapes() -> None:
    assert c_string('a"b\\c') == '"a\\"b\\\\c"'
    assert c_string("x\n1") == '"x\\0121"'  # octal, so the following digit is not swallowed
    assert c_string("é") == '"\\303\\251"'


def test_header_compiles(tmp_path: Path) -> None:
    bundle = {"node_id": "11111111-2222-3333-4444-555555555555", "name": 'board "1"', "server_url": "https://h:8443",
              "keepalive_url": "https://h:8443/api/v1/keepalive", "token": "tok\\en",
              "ca_pem": "-----BEGIN CERTIFICATE-----\nABC\n-----END CERTIFICATE-----\n", "interval": 2.5}
    header = render_header(bundle)
    assert "#define DVIC_INTERVAL_MS 2500UL" in header
    assert "SECRET" in header
    (tmp_path / "dvic_node_config.h").write_text(header)
    (tmp_path / "main.c").write_text(
        '#include <string.h>\n#include "dvic_node_config.h"\n'
        "int main(void) { return (int)(strlen(DVIC_CA_PEM) + strlen(DVIC_NODE_TOKEN) + DVIC_INTERVAL_MS) == 0; }\n"
    )
    import shutil

    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(tmp_path / "m"), str(tmp_path / "main.c")], check=True)
    with pytest.raises(InstallerError, match="interval"):
        render_header({**bundle, "interval": "soon"})


def _parse(argv: list[str]) -> object:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=None)
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_sources_and_global_options() -> None:
    args = _parse(["--server", "https://s:1", "add-node", "10.0.0.9", "--user", "pi", "--jump", "ops@gw:2200"])
    assert args.server == "https://s:1"  # a subcommand must not reset the global option
    assert _source(args) == Jump(host="gw", port=2200, user="ops", client_keys=None)
    assert _source(_parse(["add-node", "h", "--jump", "gw"])) == Jump(host="gw", port=22, user="")
    assert _source(_parse(["add-node", "h", "--jump", "a@[fe80::1]:2022"])).host == "fe80::1"
    assert _source(_parse(["add-node", "h", "--via", "pi-1"])) == ViaNode("pi-1")
    assert _source(_parse(["add-node", "h"])) == Direct()
    with pytest.raises(SystemExit):
        _parse(["add-node", "h", "--via", "a", "--jump", "b"])


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add-node", "--user", "pi"]) == 2
    assert "needs TARGET" in capsys.readouterr().err
    assert main(["add-node", "--kind", "esp32", "--name", "b1"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["remove-node", "pi-1", "--uninstall"]) == 2
    assert "--user" in capsys.readouterr().err


def test_daemon_version() -> None:
    from installer.flow import daemon_version
    from installer.paths import DEFAULT_DAEMON_SOURCE

    assert daemon_version('"""doc"""\nimport os\nVERSION = "1.2.3"\n') == "1.2.3"
    assert daemon_version("print('no version')\n") == ""
    if DEFAULT_DAEMON_SOURCE.exists():
        assert daemon_version(DEFAULT_DAEMON_SOURCE.read_text())


def test_host_key_checking_is_never_switched_off() -> None:
    import installer

    package = Path(installer.__file__).parent
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert "known_hosts=None" not in text.replace(" ", ""), source
        assert "known_hosts=()" not in text.replace(" ", ""), source


def test_reported_address() -> None:
    from installer.flow import _reported_address

    assert _reported_address({"facts": {"ips": ["127.0.0.1", "::1", "10.0.0.42", "10.0.0.43"]}}) == "10.0.0.42"
    assert _reported_address({"facts": {}}) == "" and _reported_address({}) == ""


def test_install_script_passes_shellcheck(tmp_path: Path) -> None:
    import shutil

    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    for init in ("systemd", "none"):
        script = tmp_path / f"install-{init}.sh"
        script.write_text(render_script("install", layout=LAYOUT, init=init, target_path=PATH, daemon_text="x\n",
                                        unit_text="[Service]\n", bundle={"node_id": "n"}))
        done = subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(script)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout
