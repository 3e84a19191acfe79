"""The manifest and archive rules of demo releases, as plain functions (central/demos/)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from central.demos.archive import BadArchive, Limits, check_archive
from central.demos.manifest import ManifestError, key_line, parse_manifest, unmet_requirement, version_key
from tests.support.releases import add_file, add_member, archive

GOOD = b'name = "robot-arm"\nversion = "1.4.0"\nrun = ["python3", "app.py"]\n'


def test_a_minimal_manifest_gets_the_defaults() -> None:
    assert parse_manifest(GOOD) == {"name": "robot-arm", "version": "1.4.0", "run": ["python3", "app.py"],
                                    "restart": "always", "start_timeout_s": 30, "stop_grace_s": 10}


def test_name_and_version_given_override_the_file() -> None:
    out = parse_manifest(b'run = "./start.sh"\n', name="arm", version="2.0.0-rc1")
    assert (out["name"], out["version"], out["run"]) == ("arm", "2.0.0-rc1", "./start.sh")


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD + b'restart = "sometimes"\n', "dvic-demo.toml:4: restart: expected one of always, on-failure, never"),
    (GOOD + b"\n\nstart_timeout_s = 0\n", "dvic-demo.toml:6: start_timeout_s: expected a number of seconds from 1"),
    (GOOD + b'restrat = "always"\n', "dvic-demo.toml:4: restrat: unknown key"),
    (GOOD.replace(b"1.4.0", b"one"), "dvic-demo.toml:2: version: expected a version"),
    (b'version = "1"\nrun = "x"\n', "dvic-demo.toml: name: missing (give it in the file, or with --name)"),
    (GOOD + b'[env]\nGOOD = "1"\n"1BAD" = "x"\n', "dvic-demo.toml:6: env.1BAD: not a valid environment variable"),
    (GOOD + b'workdir = "../up"\n', "dvic-demo.toml:4: workdir: '../up' must stay inside the release"),
    (GOOD + b'keep = ["/etc"]\n', "dvic-demo.toml:4: keep: '/etc' must stay inside the release"),
    (GOOD + b'[requires]\nkinds = ["toaster"]\n', "dvic-demo.toml:5: requires.kinds: unknown node kind 'toaster'"),
    (GOOD + b'requires.colour = ["red"]\n', "dvic-demo.toml:4: requires.colour: unknown key"),
    (b'name = "a"\nversion = \n', "dvic-demo.toml: not valid TOML: Invalid value (at line 2, column 11)"),
    (b'name = "a"\nversion = "1"\nrun = []\n', "dvic-demo.toml:3: run: expected a non-empty list"),
    (b"\xff\xfe", "dvic-demo.toml: not UTF-8 text"),
])
def test_manifest_errors_name_the_file_the_key_and_the_line(text: bytes, expected: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(text)
    assert str(err.value).startswith(expected), str(err.value)


def test_key_line_finds_keys_in_tables_and_dotted_keys() -> None:
    text = 'name = "a"\n[env]\nA = "1"\n[requires]\nkinds = []\n'
    assert (key_line(text, "", "name"), key_line(text, "env", "A"), key_line(text, "requires", "kinds")) == (1, 3, 5)
    assert key_line('requires.kinds = []\n', "requires", "kinds") == 1


def test_versions_compare_numerically() -> None:
    assert sorted(["1.10.0", "1.9.2", "1.10.0-rc1", "0.9"], key=version_key) == ["0.9", "1.9.2", "1.10.0-rc1", "1.10.0"]


def test_requires_says_why_a_node_does_not_fit() -> None:
    manifest = {"requires": {"kinds": ["raspberry"], "arch": ["aarch64"]}}
    assert unmet_requirement(manifest, "raspberry", "", "aarch64") is None
    assert "kind raspberry" in (unmet_requirement(manifest, "desktop", "", "aarch64") or "")
    assert "arch aarch64" in (unmet_requirement(manifest, "raspberry", "", "x86_64") or "")


MANIFEST = {"name": "arm", "version": "1.0.0", "run": ["python3", "app.py"]}


def test_a_good_archive_yields_its_manifest_size_and_members(tmp_path: Path) -> None:
    path = archive(tmp_path / "ok.tar.gz", MANIFEST, {"app.py": b"print(1)\n", "data/x": b"12345"},
                   extra=lambda t: add_member(t, "link", tarfile.SYMTYPE, "data/x"))
    contents = check_archive(path, Limits())
    assert parse_manifest(contents.manifest)["name"] == "arm"
    assert contents.members == 4 and contents.unpacked_bytes == len(b"print(1)\n") + 5 + len(contents.manifest)


@pytest.mark.parametrize(("extra", "reason"), [
    (lambda t: add_file(t, "/etc/evil", b"x"), "bad archive member '/etc/evil': absolute path"),
    (lambda t: add_file(t, "a/../../evil", b"x"), "bad archive member 'a/../../evil': '..' component"),
    (lambda t: add_member(t, "out", tarfile.SYMTYPE, "../../etc/passwd"), "a symlink to '../../etc/passwd', outside"),
    (lambda t: add_member(t, "abs", tarfile.SYMTYPE, "/etc/passwd"), "a symlink to '/etc/passwd', outside"),
    (lambda t: add_member(t, "hard", tarfile.LNKTYPE, "/etc/passwd"), "a hard link to '/etc/passwd'"),
    (lambda t: add_member(t, "dev", tarfile.CHRTYPE), "'dev': a character device"),
    (lambda t: add_member(t, "blk", tarfile.BLKTYPE), "'blk': a block device"),
    (lambda t: add_member(t, "fifo", tarfile.FIFOTYPE), "'fifo': a FIFO"),
    (lambda t: (add_member(t, "d", tarfile.SYMTYPE, "."), add_file(t, "d/x", b"1")), "below the symlink 'd'"),
    (lambda t: add_file(t, "app.py", b"again"), "'app.py': it appears twice"),
])
def test_hostile_members_are_refused_naming_the_member(tmp_path: Path, extra, reason: str) -> None:
    path = archive(tmp_path / "bad.tar.gz", MANIFEST, {"app.py": b"1"}, extra=extra)
    with pytest.raises(BadArchive, match=None) as err:
        check_archive(path, Limits())
    assert reason in str(err.value)


def test_bombs_stop_at_the_limits(tmp_path: Path) -> None:
    many = archive(tmp_path / "many.tar.gz", MANIFEST, {f"f{i}": b"" for i in range(50)})
    with pytest.raises(BadArchive, match="more than 20 members"):
        check_archive(many, Limits(max_members=20))
    big = archive(tmp_path / "big.tar.gz", MANIFEST, {"zeros": bytes(2 * 1024 * 1024)})
    assert big.stat().st_size < 20_000  # compresses a thousandfold: a small bomb
    with pytest.raises(BadArchive, match="unpacks to more than 1048576 bytes"):
        check_archive(big, Limits(max_unpacked_bytes=1024 * 1024))


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.write_bytes(b"not gzip at all"), "not a gzip-compressed tar archive"),
    (lambda p: archive(p, None, {"app.py": b"1"}), "no dvic-demo.toml at the archive's root"),
    (lambda p: archive(p, None, {"sub/dvic-demo.toml": b"x"}), "no dvic-demo.toml at the archive's root"),
])
def test_not_a_release(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "x.tar.gz"
    make(path)
    with pytest.raises(BadArchive, match=reason):
        check_archive(path, Limits())
