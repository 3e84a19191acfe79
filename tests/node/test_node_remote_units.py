"""The remote-control building blocks of the daemon without a socket: the exec-id journal, RSA checks."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import dvic_node
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def test_exec_journal_remembers_ids_across_instances_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "exec_ids"
    j = dvic_node.ExecJournal(str(path), keep=5)
    for i in range(12):
        j.record(f"id-{i}")
    assert j.seen("id-11") and j.seen("id-7") and not j.seen("id-6")  # only the newest 5
    assert len(path.read_text().splitlines()) <= 10  # compacted past 2 x keep lines
    with open(path, "a") as f:
        f.write("id-torn")  # a crash mid-write: no newline, and not an id a server would reuse
        f.write("\nnot a valid id!\n")
    again = dvic_node.ExecJournal(str(path), keep=5)
    assert again.seen("id-11") and again.seen("id-torn") and not again.seen("not a valid id!")
    assert not again.seen("id-0")


def test_exec_journal_that_cannot_be_written_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    j = dvic_node.ExecJournal(str(blocker / "exec_ids"))
    with pytest.raises(NotADirectoryError):  # unknown what ran: the caller refuses to run anything
        j.seen("x")
    with pytest.raises(NotADirectoryError):
        j.record("x")


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public(key: rsa.RSAPrivateKey) -> dict:
    nums = key.public_key().public_numbers()
    return {"n": format(nums.n, "x"), "e": nums.e}


def test_rsa_pkcs1_sha256_verification_is_strict(key: rsa.RSAPrivateKey) -> None:
    data = b"VERSION = '9.9.9'\n"
    sig = base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
    pub = public(key)
    assert dvic_node.rsa_verify_sha256(data, sig, pub)
    assert not dvic_node.rsa_verify_sha256(data + b" ", sig, pub)
    raw = base64.b64decode(sig)
    assert not dvic_node.rsa_verify_sha256(data, base64.b64encode(b"\0" + raw).decode(), pub)  # wrong length
    assert not dvic_node.rsa_verify_sha256(data, "!!not base64!!", pub)
    assert not dvic_node.rsa_verify_sha256(data, sig, {"n": "zz", "e": 3})
    assert not dvic_node.rsa_verify_sha256(data, sig, {})
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = base64.b64encode(small.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
    assert not dvic_node.rsa_verify_sha256(data, weak, public(small))  # below 2048 bits: not trusted
    e3 = {"n": pub["n"], "e": 1}  # e=1 would make the "signature" the padded digest itself
    k = (int(pub["n"], 16).bit_length() + 7) // 8
    t = dvic_node.DIGEST_INFO_SHA256 + hashlib.sha256(data).digest()
    em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    assert not dvic_node.rsa_verify_sha256(data, base64.b64encode(em).decode(), e3)


def test_endorsement_chains_skip_garbage_and_stop_at_a_break(key: rsa.RSAPrivateKey) -> None:
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    third = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def endorse(signer: rsa.RSAPrivateKey, new: rsa.RSAPrivateKey) -> dict:
        statement = dvic_node.key_statement(public(new))
        return {"key": public(new),
                "signature": base64.b64encode(signer.sign(statement, padding.PKCS1v15(), hashes.SHA256())).decode()}

    chain = dvic_node.follow_endorsements(public(key), ["junk", {"key": "x"}, endorse(key, second),
                                                        {"key": {"n": 5, "e": "x"}}, endorse(second, third)])
    assert chain == [public(key), public(second), public(third)]
    assert dvic_node.follow_endorsements(public(key), [endorse(second, third)]) == [public(key)]
    assert dvic_node.follow_endorsements(public(key), None) == [public(key)]


VERSIONS = {"0.1.0": (0, 1, 0), "0.2.10": (0, 2, 10), "0.10.0": (0, 10, 0), "0.9.9": (0, 9, 9),
            "1.0rc1": (1, 0), "1.0": (1, 0), "2": (2,), "1.0.0.1": (1, 0, 0, 1), "v1.2": (0, 2), "": (0,),
            "1..3": (1, 0, 3), "10.0.0-beta": (10, 0, 0)}


def test_versions_compare_numerically_as_the_server_compares() -> None:
    from central.release import parse_version as servers

    assert dvic_node.parse_version("0.10.0") > dvic_node.parse_version("0.9.9")
    assert {text: dvic_node.parse_version(text) for text in VERSIONS} == VERSIONS
    # The daemon's copy (it is one file) must agree with the server's on every version.
    assert {text: servers(text) for text in VERSIONS} == VERSIONS
