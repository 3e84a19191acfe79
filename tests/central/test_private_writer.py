"""dvic_core.files.write_private (server, client, installer) and the daemon's own copy,
dvic_node.write_file_atomic (one file, Python 3.8), held to the same cases: the mode from the first
byte, a symlink planted at the target or at the temp name, short writes, a disk that fills up and
a rename that fails (no temp file left behind, the old file intact)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import dvic_node
import pytest

from dvic_core.files import write_private

ROOT = Path(__file__).resolve().parents[2]
Writer = Callable[[Path, bytes, int], None]


def _shared(path: Path, data: bytes, mode: int) -> None:
    write_private(path, data, mode)


def _daemon(path: Path, data: bytes, mode: int) -> None:
    dvic_node.write_file_atomic(str(path), data, mode, sync=True)


WRITERS = {"shared": _shared, "daemon": _daemon}
# The same writers as source text, for the subprocess that runs with a file size limit.
WRITER_CALLS = {
    "shared": "from dvic_core.files import write_private as w; w(sys.argv[1], data, 0o600)",
    "daemon": "import dvic_node; dvic_node.write_file_atomic(sys.argv[1], data, 0o600, sync=True)",
}


@pytest.fixture(params=sorted(WRITERS))
def writer_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def writer(writer_name: str) -> Writer:
    return WRITERS[writer_name]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_new_and_replaced_files_have_the_mode_asked_whatever_the_umask(
        writer: Writer, tmp_path: Path, mode: int) -> None:
    target = tmp_path / "secret"
    old_umask = os.umask(0o077 if mode == 0o644 else 0o000)
    try:
        writer(target, b"first", mode)
        assert target.read_bytes() == b"first" and _mode(target) == mode
        target.chmod(0o666)
        writer(target, b"second", mode)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"second" and _mode(target) == mode
    assert os.listdir(tmp_path) == ["secret"]


def test_a_symlink_at_the_target_is_replaced_not_written_through(writer: Writer, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    target = tmp_path / "secret.key"
    target.symlink_to(elsewhere)
    writer(target, b"secret", 0o600)
    assert not target.is_symlink() and target.read_bytes() == b"secret" and _mode(target) == 0o600
    assert elsewhere.read_bytes() == b"untouched"


@pytest.fixture
def planted_temp_name(writer_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temp name the writer tries first: the daemon's is fixed (path.tmp.PID); the shared
    writer's is random, so mkstemp is handed "planted" as its first candidate."""
    if writer_name == "daemon":
        yield tmp_path / f"secret.key.tmp.{os.getpid()}"
        return
    candidates = iter(["planted", "fresh"])
    monkeypatch.setattr(tempfile, "_name_sequence", candidates)
    yield tmp_path / ".secret.key.planted.tmp"
    assert next(candidates, None) is None, "mkstemp did not try the planted name first"


def test_a_symlink_planted_at_the_temp_name_is_never_written_through(
        writer_name: str, writer: Writer, tmp_path: Path, planted_temp_name: Path) -> None:
    loot = tmp_path / "loot"
    loot.write_bytes(b"")
    planted_temp_name.symlink_to(loot)
    target = tmp_path / "secret.key"
    target.write_bytes(b"old")
    try:
        writer(target, b"secret", 0o600)
    except OSError:
        # The daemon opens its one temp name with O_NOFOLLOW and gives up; the old file stays.
        assert writer_name == "daemon"
        assert target.read_bytes() == b"old"
    else:
        # mkstemp (O_EXCL|O_NOFOLLOW) passes over the planted name and takes another.
        assert writer_name == "shared"
        assert target.read_bytes() == b"secret" and _mode(target) == 0o600
    assert loot.read_bytes() == b""
    assert planted_temp_name.is_symlink()
    assert sorted(os.listdir(tmp_path)) == sorted(["loot", "secret.key", planted_temp_name.name])


def test_short_writes_are_continued_until_every_byte_is_written(
        writer: Writer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls: list[int] = []

    def at_most_7_bytes(fd: int, data: bytes | memoryview) -> int:
        calls.append(fd)
        return real_write(fd, data[:7])

    data = bytes(range(256)) * 4
    monkeypatch.setattr(os, "write", at_most_7_bytes)
    writer(tmp_path / "secret", data, 0o600)
    monkeypatch.undo()
    assert (tmp_path / "secret").read_bytes() == data
    assert len(calls) >= len(data) // 7


def test_a_full_disk_leaves_the_old_file_and_no_temp_file(writer_name: str, tmp_path: Path) -> None:
    """A real short write then EFBIG: the process may write at most 4 KiB per file (RLIMIT_FSIZE),
    so the first write stops at 4 KiB and the next one fails, as on a disk that fills up."""
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "data = b'x' * 10000\n"
        "try:\n"
        f"    {WRITER_CALLS[writer_name]}\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "else:\n"
        "    print('written')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "node_script")])}
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                            env=env, timeout=60, check=True)
    assert result.stdout.split() == ["refused", "27"]  # EFBIG
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["secret"]


def test_a_failed_rename_leaves_no_temp_file(writer: Writer, tmp_path: Path) -> None:
    target = tmp_path / "in-the-way"
    target.mkdir()
    (target / "keep").touch()  # a non-empty directory: the final rename fails
    with pytest.raises(OSError):
        writer(target, b"secret", 0o600)
    assert os.listdir(tmp_path) == ["in-the-way"]


# -- the call sites ----------------------------------------------------------------------------
def test_dvic_login_keeps_no_temp_file_when_a_file_cannot_be_replaced(tmp_path: Path) -> None:
    from tui.api.config import Store

    store = Store(tmp_path / "dvic")
    store.save("https://central.example:8443", "CA PEM\n", "ab" * 32, "tok-1")
    (store.dir / "config.json").unlink()
    (store.dir / "config.json").mkdir()
    (store.dir / "config.json" / "keep").touch()  # the rename of the new config.json fails
    with pytest.raises(OSError):
        store.save("https://central.example:8443", "CA PEM\n", "ab" * 32, "tok-2")
    assert sorted(os.listdir(store.dir)) == ["ca.pem", "config.json", "token"]
    assert {_mode(store.dir / name) for name in ("ca.pem", "token")} == {0o600}


def test_a_release_is_never_written_through_a_symlink_in_the_release_dir(tmp_path: Path) -> None:
    from central.release import ReleaseStore

    releases = ReleaseStore(tmp_path)
    releases.dir.mkdir()
    loot = tmp_path / "loot"
    loot.write_bytes(b"")
    (releases.dir / "dvic_node.tmp").symlink_to(loot)  # the temp name publish() used to write through
    release = releases.publish(b"VERSION = '9.1.0'\n")
    assert loot.read_bytes() == b""
    assert (releases.dir / "dvic_node.py").read_bytes() == b"VERSION = '9.1.0'\n"
    assert releases.current() == release
    assert {_mode(releases.dir / name) for name in ("dvic_node.py", "release.json")} == {0o644}


def test_a_confirmed_host_key_is_written_0600_replacing_a_symlink(tmp_path: Path) -> None:
    import asyncssh

    from installer.hostkeys import KnownHosts

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched\n")
    path = tmp_path / "ssh" / "known_hosts"
    path.parent.mkdir()
    path.symlink_to(elsewhere)
    key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    KnownHosts(path).add("10.0.0.7", 22, key)
    assert not path.is_symlink() and _mode(path) == 0o600
    assert len(KnownHosts(path).keys_for("10.0.0.7", 22)) == 1
    assert elsewhere.read_text() == "untouched\n"
