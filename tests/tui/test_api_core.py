"""The client library's core without sockets: requests as data, their encoding, the one decoder of
answers and refusals, the TLS policy, and the reads `refusals.explain` asks for
(tui/api/core.py, calls.py, tls.py, refusals.py). The transports against the real server: test_api_transports.py."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dvic_core.constants import OPERATOR_HEARTBEAT_S
from tui.api import calls, core, refusals, tls
from tui.api.core import Request, Upgrade, decode, decode_frame, error, json_object, payload, target
from tui.api.errors import ApiError, BadResponse, ConfigError


# -- encoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [
    {"group": "a b"}, {"q": "x&y=z+1/2?#%"}, {"node": "pi-1,pi-2", "limit": "5"}, {"q": "élan ☃"}, {"q": ""},
])
def test_a_query_is_encoded_as_urlencode_does(values: dict[str, str]) -> None:
    assert core.query(values) == urlencode(values)
    assert target("/logs", values) == f"/api/v1/logs?{urlencode(values)}"
    assert target("/logs") == target("/logs", {}) == "/api/v1/logs"


def test_params_drop_unset_values_and_spell_booleans_and_from() -> None:
    assert core.params(node=None, q="", from_=1.5, to=2, on=True, off=False) == {
        "from": "1.5", "to": "2", "on": "true", "off": "false"}


def test_calls_build_the_documented_requests() -> None:
    nodes = calls.nodes(group="hall c")
    assert (nodes.method, nodes.path, nodes.params) == ("GET", "/nodes", {"group": "hall c"})
    assert calls.node("pi/1 é").path == "/nodes/pi%2F1%20%C3%A9"
    metrics = calls.metrics("n", 10.7, 20.2, 5, ["cpu", "mem"])
    assert metrics.params == {"from": "10", "to": "21", "step": "5", "names": "cpu,mem"}  # widened outwards
    assert calls.logs(node="n", from_=3, limit=10).params == {"node": "n", "from": "3", "limit": "10"}
    assert calls.request_action("n", "reboot", demo="").body == {"action": "reboot"}
    assert calls.run_command({"nodes": ["a"]}, shell="ls", timeout=5).body == {"nodes": ["a"], "shell": "ls",
                                                                              "timeout": 5}
    assert calls.run_command({"all": True}, argv=["true"]).body == {"all": True, "argv": ["true"]}
    assert calls.enroll("pi", "raspberry", "lab").body == {"name": "pi", "kind": "raspberry", "group": "lab"}
    shell = calls.shell("pi", 80, 24)
    assert (shell.path, shell.params, shell.max_size) == ("/nodes/pi/shell", {"cols": "80", "rows": "24"},
                                                          core.RELAY_MAX_BYTES)
    assert calls.stream().max_size == core.MAX_MESSAGE_BYTES


def test_a_payload_is_json_or_the_raw_bytes_with_their_type() -> None:
    assert payload(calls.set_maintenance("n", True)) == (b'{"on": true}', "application/json")
    assert payload(calls.publish_release(b"VERSION = '1'\n")) == (b"VERSION = '1'\n", "text/x-python")
    assert payload(calls.me()) == (None, "")
    assert core.base_headers("t0k") == {"User-Agent": core.USER_AGENT, "Authorization": "Bearer t0k"}
    assert "Authorization" not in core.base_headers(None)


def test_the_stdlib_transports_silence_limit_follows_the_one_heartbeat() -> None:
    assert core.HEARTBEAT_S == OPERATOR_HEARTBEAT_S
    assert core.SILENCE_S > 2 * OPERATOR_HEARTBEAT_S  # two missed server pings before giving up


# -- decoding ------------------------------------------------------------------------------------
def test_answers_decode_to_what_the_call_promises() -> None:
    assert decode(calls.me(), 200, b'{"name": "ada"}') == {"name": "ada"}
    assert decode(calls.revoke_node("n"), 204, b"") == {}
    assert decode(calls.nodes(), 200, b'{"nodes": [{"id": "1"}, 7, "x"]}') == [{"id": "1"}]
    page = b'{"lines": [], "next_cursor": "c"}'
    assert decode(calls.logs(), 200, page) == {"lines": [], "next_cursor": "c"}
    assert decode(calls.recording("s"), 200, "é\n".encode()) == "é\n"
    with pytest.raises(BadResponse, match="GET /me: the server's answer is not a JSON object"):
        decode(calls.me(), 200, b"[1]")
    with pytest.raises(BadResponse, match="no `events` list") as no_list:
        decode(calls.events(), 200, b'{"events": {}}')
    assert (no_list.value.status, no_list.value.code) == (200, "bad_response")


@pytest.mark.parametrize(("status", "body", "header", "expected"), [
    # The server's JSON error wins, whatever else came.
    (409, b'{"error": {"code": "name_taken", "message": "pi exists"}}', "other: x", ("name_taken", "pi exists")),
    # A refused websocket upgrade: aiohttp drops the body, the header repeats the reason.
    (403, b"", "port_not_allowed: tunnels may reach ports 22", ("port_not_allowed", "tunnels may reach ports 22")),
    # An old server or a proxy: a code for the status, and the caller's words.
    (403, b"<html>nope</html>", "", ("forbidden", "FALLBACK")),
    (429, b'{"error": "flat"}', "no separator", ("too_many", "FALLBACK")),
    (502, b"bad gateway", "", ("http_error", "FALLBACK")),
])
def test_one_decoder_reads_every_refusal(status: int, body: bytes, header: str, expected: tuple[str, str]) -> None:
    err = error(status, body, header, "FALLBACK")
    assert (err.status, err.code, err.message) == (status, *expected)
    assert core.said_why(err) == (expected[1] != "FALLBACK")


def test_plain_answers_and_upgrades_say_their_refusal_their_own_way() -> None:
    with pytest.raises(ApiError) as plain:
        decode(calls.node("x"), 502, b"bad gateway")
    assert plain.value.message == "HTTP 502 from /nodes/x: b'bad gateway'"
    up = core.refused(calls.command_stream("c1"), 502, b"", "")
    assert up.message == "the server refused the command stream (HTTP 502)"
    said = core.refused(Upgrade("/stream", what="the stream"), 401, b"", "bad_token: unknown or revoked token")
    assert (said.code, said.message) == ("bad_token", "unknown or revoked token")


def test_a_garbled_frame_is_skipped_not_fatal() -> None:
    assert decode_frame('{"type": "done"}') == {"type": "done"}
    assert decode_frame(b'{"type": "x"}') == {"type": "x"}
    assert decode_frame("{not json") is None and decode_frame("[1, 2]") is None and decode_frame("") is None


def test_a_request_can_carry_its_own_decoder() -> None:
    req = Request("GET", "/health", json_object)
    assert decode(req, 200, json.dumps({"ok": True}).encode()) == {"ok": True}
    assert repr(req) == "Request(GET /health)"


# -- the one TLS policy --------------------------------------------------------------------------
HOSTS = ["localhost", "127.0.0.1", "127.255.255.254", "127.1", "0127.0.0.1", "127.0.0.01", "127.0.0.256",
         "128.0.0.1", "10.0.0.1", "::1", "0:0:0:0:0:0:0:1", "::0:1", "0::0001", "::", "::2", "1::1",
         "::1:0", "0:0:0:0:0:0:0:0:1", "::1::", "::g", "example.org", "", "127.0.0.1.", "１２７.0.0.1"]


@pytest.mark.parametrize("host", HOSTS)
def test_loopback_is_recognised_as_ipaddress_does(host: str) -> None:
    try:
        expected = ipaddress.ip_address(host).is_loopback
    except ValueError:
        expected = host == "localhost"
    assert tls.is_loopback(host) == expected


def test_an_ipv4_mapped_address_is_not_taken_for_loopback() -> None:
    assert not tls.is_loopback("::ffff:127.0.0.1")  # the token would leave this machine's loopback rules


@pytest.mark.parametrize(("server", "ca", "code"), [
    ("https://10.0.0.5:8443", None, "no_ca"),  # no fallback to the system's trust store
    ("http://10.0.0.5:8080", None, "insecure_url"),
    ("http://dvic.example.org", "ca.pem", "insecure_url"),
    ("ftp://127.0.0.1", None, "bad_url"),
    ("10.0.0.5:8443", None, "bad_url"),
    ("https://h:99999", "ca.pem", "bad_url"),
    ("https://[::1", "ca.pem", "bad_url"),
])
def test_the_policy_refuses_with_a_code_and_what_to_do(server: str, ca: str | None, code: str) -> None:
    with pytest.raises(ConfigError) as refused:
        tls.check(server, ca)
    assert refused.value.code == code and str(refused.value)


@pytest.mark.parametrize(("server", "ca", "scheme"), [
    ("https://10.0.0.5:8443", "ca.pem", "https"), ("http://127.0.0.1:8080", None, "http"),
    ("http://localhost", None, "http"), ("http://[::1]:8080", None, "http"),
])
def test_the_policy_allows(server: str, ca: str | None, scheme: str) -> None:
    assert tls.check(server, ca) == scheme


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_https_trusts_the_pinned_ca_alone(tmp_path: Path) -> None:
    pem = _ca_pem()
    (tmp_path / "ca.pem").write_text(pem)
    for ctx in (tls.context("https://h:1", str(tmp_path / "ca.pem")), tls.context("https://h:1", None, pem)):
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test CA"),),)]
    assert tls.context("http://127.0.0.1:1", None) is None
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=f"cannot load the CA file {tmp_path / 'bad.pem'}") as bad:
        tls.context("https://h:1", str(tmp_path / "bad.pem"))
    assert bad.value.code == "bad_ca"


# -- why a shell or a tunnel was refused -----------------------------------------------------------
def _explain(exc: ApiError, answers: dict[str, object], doing: str = "open a shell") -> tuple[ApiError, list[str]]:
    """Drives `refusals.explain` as a transport does, answering its reads from `answers`."""
    known: dict[str, dict[str, object]] = {}
    asked: list[str] = []
    while isinstance(step := refusals.explain(exc, "pi", doing, " (OTHERWISE)", known), str):
        asked.append(step)
        answer = answers[step]
        if isinstance(answer, ApiError):
            return answer, asked
        assert isinstance(answer, dict)
        known[step] = answer
    return step, asked


ACTIVE_OPERATOR = {"name": "ada", "status": "active", "role": "operator"}


@pytest.mark.parametrize(("refusal", "answers", "asked", "code", "words"), [
    (ApiError(401, "bad_token", "x"), {}, [], "unauthorized", "does not know this token"),
    (ApiError(404, "not_found", "x"), {"node": ApiError(404, "not_found", "no such node 'pi'")}, ["node"],
     "not_found", "no such node 'pi'"),
    (ApiError(403, "forbidden", "x"), {"me": {"name": "bob", "status": "pending", "role": "viewer"}}, ["me"],
     "pending_approval", "'bob' is not active"),
    (ApiError(403, "forbidden", "x"), {"me": {"name": "vi", "status": "active", "role": "viewer"}}, ["me"],
     "forbidden", "your role is 'viewer'"),
    (ApiError(403, "maintenance", "x"), {"me": ACTIVE_OPERATOR, "node": {"name": "pi", "state": "maintenance"}},
     ["me", "node"], "maintenance", "only admins may open a shell on it"),
    (ApiError(403, "forbidden", "x"), {"me": ACTIVE_OPERATOR, "node": {"name": "pi", "state": "online"}},
     ["me", "node"], "forbidden", "does not allow you to open a shell (OTHERWISE)"),
    (ApiError(409, "conflict", "x"), {"node": {"name": "pi", "state": "offline"}}, ["node"], "node_offline",
     "'pi' is offline"),
    (ApiError(429, "too_many", "x"), {}, [], "too_many", "too many sessions open"),
    (ApiError(403, "port_not_allowed", "ports 22 only"), {}, [], "port_not_allowed",
     "cannot open a shell: ports 22 only"),
    (ApiError(502, "http_error", "the server refused the shell (HTTP 502)"), {}, [], "http_error", "HTTP 502"),
])
def test_a_refusal_is_explained_with_the_reads_it_needs(refusal: ApiError, answers: dict[str, object],
                                                        asked: list[str], code: str, words: str) -> None:
    shown, reads = _explain(refusal, answers)
    assert reads == asked
    assert shown.code == code and words in shown.message
